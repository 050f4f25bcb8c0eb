"""/v1/experiments/<key>/report (admin or viewer scope) and /export (admin): results and raw data.

``GET /report`` returns JSON by default, ``?format=html`` a self-contained page,
``?format=csv`` the results table and ``?format=text`` the console summary (what ``abtest
report --format text`` prints): four renderings of the same report, built with the same options. Query parameters (documented with their ranges in :mod:`abtest.api.openapi`):
``cap`` (winsorize latency at this pooled quantile level, 0.5 < cap < 1), ``alpha``
(0 < alpha < 0.5), ``mde`` (relative minimum detectable effect for the power plan,
0 < mde < 10), ``phase`` (an earlier phase's results, an integer >= 1; default the current
phase; a phase the experiment never had is a 404). The JSON keeps the report's key order
(recommendation and headline first). ``GET /export?table=exposures|requests|events`` streams
raw CSV.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, request, stream_with_context

from ..errors import ValidationError
from ..reports import ReportOptions, build_report
from ..reports.csv import EXPORT_TABLES, export_csv, export_statement, render_csv
from ..reports.html import render_html
from ..reports.text import render_text
from ..services.experiments import get_experiment
from .common import requires, services

bp = Blueprint("reports", __name__, url_prefix="/v1/experiments")

FORMATS = ("json", "html", "csv", "text")


def _float_arg(name: str, default: float | None, lo: float, hi: float) -> float | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(name, f"must be a number, got {raw!r}") from None
    if not lo < value < hi:
        raise ValidationError(name, f"must be strictly between {lo:g} and {hi:g}")
    return value


def _phase_arg() -> int | None:
    raw = request.args.get("phase")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError("phase", f"must be a whole number >= 1, got {raw!r}") from None
    if value < 1:
        raise ValidationError("phase", f"must be a whole number >= 1, got {value}")
    return value


def options_from_request(fmt: str) -> ReportOptions:
    return ReportOptions(
        histogram=fmt == "html",
        alpha=_float_arg("alpha", 0.05, 0.0, 0.5) or 0.05,
        cap=_float_arg("cap", None, 0.5, 1.0),
        mde=_float_arg("mde", 0.05, 0.0, 10.0) or 0.05,
        phase=_phase_arg(),
    )


@bp.get("/<key>/report")
@requires("viewer")
def report(key: str) -> Response:
    fmt = request.args.get("format", "json")
    if fmt not in FORMATS:
        raise ValidationError("format", f"must be one of {', '.join(FORMATS)}")
    options = options_from_request(fmt)
    svc = services()
    with svc.db.session() as session:
        body = build_report(session, key, options)
    if fmt == "html":
        return Response(render_html(body), mimetype="text/html")
    if fmt == "text":
        return Response(render_text(body), mimetype="text/plain")
    if fmt == "csv":
        return Response(render_csv(body), mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{key}-report.csv"'})
    # Not jsonify: the app's JSON provider may sort keys, and the report's order is documented.
    return Response(json.dumps(body.to_json(), ensure_ascii=False) + "\n", mimetype="application/json")


@bp.get("/<key>/export")
@requires("admin")
def export(key: str) -> Response:
    table = request.args.get("table")
    if table not in EXPORT_TABLES:
        raise ValidationError("table", f"must be one of {', '.join(EXPORT_TABLES)}")
    svc = services()
    with svc.db.session() as session:
        exp = get_experiment(session, key)
        exp_id = exp.id
    export_statement(table, exp_id, key)  # validates before the response starts
    chunks = export_csv(svc.db.engine, table, exp_id, key)
    return Response(stream_with_context(chunks), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{key}-{table}.csv"'})
