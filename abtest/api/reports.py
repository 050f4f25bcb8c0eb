"""/v1/experiments/<key>/report and /export (admin scope): results and raw data.

``GET /report`` returns JSON by default, ``?format=html`` a self-contained page and
``?format=csv`` the results table. Query parameters: ``cap`` (winsorize latency at this pooled
quantile level, 0.5 < cap < 1), ``alpha`` (0 < alpha < 0.5), ``mde`` (relative minimum
detectable effect for the power plan, > 0). ``GET /export?table=exposures|requests|events``
streams raw CSV.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, stream_with_context

from ..errors import ValidationError
from ..reports import ReportOptions, build_report
from ..reports.csv import EXPORT_TABLES, export_csv, export_statement, render_csv
from ..reports.html import render_html
from ..services.experiments import get_experiment
from .common import requires, services

bp = Blueprint("reports", __name__, url_prefix="/v1/experiments")

FORMATS = ("json", "html", "csv")


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


def options_from_request(fmt: str) -> ReportOptions:
    return ReportOptions(
        histogram=fmt == "html",
        alpha=_float_arg("alpha", 0.05, 0.0, 0.5) or 0.05,
        cap=_float_arg("cap", None, 0.5, 1.0),
        mde=_float_arg("mde", 0.05, 0.0, 10.0) or 0.05,
    )


@bp.get("/<key>/report")
@requires("admin")
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
    if fmt == "csv":
        return Response(render_csv(body), mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{key}-report.csv"'})
    return jsonify(body.to_json())


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
