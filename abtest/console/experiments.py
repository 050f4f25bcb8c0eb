"""The experiments list, the experiment page (live report, lifecycle buttons, audit log, exports,
snippets), the report fragment the page refreshes, and the lifecycle confirm step."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, current_app, flash, redirect, request, stream_with_context, url_for

from ..api.common import services
from ..api.reports import options_from_request
from ..errors import Forbidden, NotFound, ValidationError
from ..reports import ReportOptions, build_report
from ..reports.csv import EXPORT_TABLES, export_csv, export_statement, render_csv
from ..reports.html import render_sections
from ..services import experiments as svc_exp
from ..services.overview import last_changes, units_by_experiment
from .blueprint import bp, page, principal
from .forms import ConfirmForm
from .summaries import BadgeCache, scoped_report_css, snippets

__all__ = ["ACTIONS", "allowed_actions"]

STATUSES = ("draft", "running", "paused", "stopped")
REPORT_OPTIONS = ("alpha", "cap", "mde", "phase")  # the report's query options, kept by the refresh
# Lifecycle buttons: (label, what the confirm page says it does)
ACTIONS: dict[str, tuple[str, str]] = {
    "start": ("Start", "Units are assigned to the variants from now on."),
    "pause": ("Pause", "Assignment stops: every unit gets the control until it is started again."),
    "resume_treatment": ("Resume the treatment", "The treatment gets its traffic again after a guardrail "
                                                 "paused it. Do this only once the breach is understood."),
    "stop": ("Stop", "Stopped for good: assignment ends and the experiment can no longer change."),
}


def _badges() -> BadgeCache:
    cache = current_app.extensions.get("abtest.console.badges")
    if cache is None:
        cache = current_app.extensions["abtest.console.badges"] = BadgeCache()
    return cache


def allowed_actions(view: dict[str, Any]) -> list[str]:
    """The lifecycle actions the service would accept now (its transition table decides)."""
    found = [a for a in ("start", "pause", "stop") if view["status"] in svc_exp.TRANSITIONS[a]]
    if view["treatment_paused"] and view["status"] != "stopped":
        found.insert(1, "resume_treatment")
    return found


@bp.get("/")
def experiments() -> Any:
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        raise ValidationError("status", f"must be one of {', '.join(STATUSES)}")
    with services().db.session() as session:
        rows = svc_exp.list_experiments(session, status)
        units, changes = units_by_experiment(session), last_changes(session)
        items = []
        for exp in rows:
            view = svc_exp.experiment_view(exp)
            badge = _badges().badge(session, view)
            items.append({
                "key": view["key"], "name": view["name"], "status": view["status"], "phase": view["phase"],
                "treatment_paused": view["treatment_paused"],
                "variants": [{"key": v["key"], "engine": v["engine"], "weight": v["weight"]} for v in view["variants"]],
                "units": units.get(exp.id, 0), "recommendation": badge.to_json() if badge else None,
                "last_change": changes.get(exp.id), "updated_at": view["updated_at"],
            })
    return page("console/list.html", {"experiments": items, "status": status, "statuses": list(STATUSES)})


def _report_sections(session: Any, key: str, options: ReportOptions) -> tuple[Any, str]:
    report = build_report(session, key, options)
    return report, render_sections(report)


@bp.get("/experiments/<key>")
def experiment(key: str) -> Any:
    svc = services()
    options = options_from_request("html")
    with svc.db.session() as session:
        exp = svc_exp.get_experiment(session, key)
        view = svc_exp.experiment_view(exp)
        audit = svc_exp.audit_entries(session, exp)
        report, sections = _report_sections(session, key, options)
    data = {
        "experiment": view, "actions": allowed_actions(view), "audit": list(reversed(audit)),
        "report": report.to_json(), "snippets": snippets(request.host_url, view),
        "refresh_s": svc.settings.console_refresh_s,
        "fragment": url_for("console.report_fragment", key=key,
                            **{k: v for k, v in request.args.items() if k in REPORT_OPTIONS}),
        "links": {"json": f"/v1/experiments/{key}", "report": f"/v1/experiments/{key}/report",
                  "audit": f"/v1/experiments/{key}/audit"},
        "exports": _exports(key),
    }
    return page("console/experiment.html", data, sections=sections, labels=ACTIONS)


def _exports(key: str) -> dict[str, str]:
    out = {"report.json": url_for("console.report_file", key=key, fmt="json"),
           "report.csv": url_for("console.report_file", key=key, fmt="csv")}
    if principal().allows("admin"):  # raw rows: the API's export is admin-only too
        out.update({f"{t}.csv": url_for("console.export", key=key, table=t) for t in EXPORT_TABLES})
    return out


@bp.get("/experiments/<key>/report-fragment")
def report_fragment(key: str) -> Response:
    """The report's sections alone: what the experiment page's script swaps in every few seconds."""
    with services().db.session() as session:
        _, sections = _report_sections(session, key, options_from_request("html"))
    return Response(sections, mimetype="text/html")


@bp.get("/report.css")
def report_css() -> Response:
    return Response(scoped_report_css(), mimetype="text/css", headers={"Cache-Control": "max-age=3600"})


@bp.get("/experiments/<key>/report.<fmt>")
def report_file(key: str, fmt: str) -> Response:
    if fmt not in ("json", "csv"):
        raise NotFound(f"no report format {fmt!r} (json or csv)")
    with services().db.session() as session:
        body = build_report(session, key, options_from_request(fmt))
    if fmt == "csv":
        return Response(render_csv(body), mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{key}-report.csv"'})
    return Response(json.dumps(body.to_json(), ensure_ascii=False) + "\n", mimetype="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{key}-report.json"'})


@bp.get("/experiments/<key>/export/<table>.csv")
def export(key: str, table: str) -> Response:
    if not principal().allows("admin"):
        raise Forbidden("raw exports need an admin key")
    if table not in EXPORT_TABLES:
        raise NotFound(f"no table {table!r} (one of {', '.join(EXPORT_TABLES)})")
    svc = services()
    with svc.db.session() as session:
        exp_id = svc_exp.get_experiment(session, key).id
    export_statement(table, exp_id, key)
    return Response(stream_with_context(export_csv(svc.db.engine, table, exp_id, key)), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{key}-{table}.csv"'})


@bp.route("/experiments/<key>/<action>", methods=["GET", "POST"])
def lifecycle(key: str, action: str) -> Any:
    """GET: the confirm step (a page with one button: works without scripts); POST: do it."""
    if action not in ACTIONS:
        raise NotFound(f"no action {action!r}")
    form = ConfirmForm()
    svc = services()
    if request.method == "GET":
        with svc.db.session() as session:
            view = svc_exp.experiment_view(svc_exp.get_experiment(session, key))
        label, meaning = ACTIONS[action]
        return page("console/confirm.html", {"experiment": view, "action": action, "label": label,
                                             "meaning": meaning, "allowed": action in allowed_actions(view)},
                    form=form)
    reason = (form.reason.data or "").strip() or None
    who = principal().name
    with svc.db.transaction() as session:
        exp = svc_exp.get_experiment(session, key, for_update=True)
        if action == "resume_treatment":
            svc_exp.resume_treatment(session, exp, who, reason or "resumed from the console")
        else:
            svc_exp.transition(session, exp, action, who)
    svc.configs.invalidate(key)
    svc.definitions.invalidate()
    flash(f"{ACTIONS[action][0]}: done.")
    return redirect(url_for("console.experiment", key=key))
