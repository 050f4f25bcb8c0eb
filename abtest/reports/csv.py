"""CSV renderings: the report's results (one row per metric x comparison) and raw exports.

The results table carries every figure the verdict rests on, so that it can be reproduced from
the file alone: the decision policy and the metric's margin, both variants' counts (rates), the
fixed-horizon and the always-valid (sequential) CIs on both scales, which of them the verdict
used (``verdict_interval``: ``absolute`` or ``relative``, empty for metrics outside the verdict),
the metric's status in the verdict (``primary_status`` or guardrail status) and the action.

``export_csv`` streams a raw table of one experiment: the query runs with a server-side cursor
(``stream_results`` + ``yield_per``) and the generator yields one CSV chunk per batch, so
memory stays flat however many rows the table holds.

Both are safe to open in a spreadsheet (OWASP "CSV injection"): a text cell that starts with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return, and is not a plain number, gets a leading
``'`` so that it is shown as text and never evaluated as a formula. Numbers (and text that is a
plain number, such as ``-0.25``) are written unchanged. Rows end in CRLF (RFC 4180), so a cell
holding a line break of either kind is always quoted.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, or_, select

from ..errors import ValidationError
from ..models import Event, Exposure, RequestLog
from .headline import decision_interval
from .model import Report

__all__ = ["RESULT_COLUMNS", "TEXT_COLUMNS", "EXPORT_TABLES", "render_csv", "export_csv", "export_statement", "safe_cell"]

RESULT_COLUMNS = (
    "metric", "role", "direction", "variant", "control_units", "treatment_units",
    "control_estimate", "treatment_estimate", "absolute_effect", "absolute_ci_lower",
    "absolute_ci_upper", "relative_effect", "relative_ci_lower", "relative_ci_upper", "p_value",
    "adjusted_p_value", "significant", "sequential_relative_ci_lower", "sequential_relative_ci_upper",
    "sequential_p_value", "chance_to_win", "error",
    "decision", "margin", "counted", "control_numerator", "control_denominator", "treatment_numerator",
    "treatment_denominator", "count_of", "sequential_absolute_ci_lower", "sequential_absolute_ci_upper",
    "verdict_interval", "status", "action",
)
# The columns that hold text (every other column is a number, a boolean or empty).
TEXT_COLUMNS = ("metric", "role", "direction", "variant", "significant", "error", "decision", "counted",
                "count_of", "verdict_interval", "status", "action")
EXPORT_TABLES = ("exposures", "requests", "events")
_BATCH = 2_000
# Cells starting with one of these may be run as a formula by a spreadsheet.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_LINE_END = "\r\n"  # RFC 4180: with both characters in the terminator, csv quotes a cell holding either


def safe_cell(value: Any) -> Any:
    """``value`` for a CSV cell: text that a spreadsheet would take for a formula gets a ``'``.

    Only strings change, and not those that are a plain number (``-0.25``, ``+3``, ``1e-5``):
    numbers the service writes stay numbers.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def _get(effect: Any, name: str) -> Any:
    return None if effect is None else getattr(effect, name)


def _status(report: Report, metric: str, role: str, variant: str) -> tuple[str | None, str | None]:
    """The metric's status in the treatment's verdict, and the treatment's action."""
    rec = next((r for r in report.recommendations if r.variant == variant), None)
    if rec is None:
        return None, None
    if role == "primary" and rec.primary_metric == metric:
        return rec.primary_status, rec.action
    return next((g.status for g in rec.guardrails if g.metric == metric), None), rec.action


def result_rows(report: Report) -> Iterator[dict[str, Any]]:
    """Flatten the report's comparisons (the CSV rows as dicts)."""
    control = report.control
    decision = report.options.decision if report.options is not None else None
    for m in report.metrics:
        for c in m.comparisons:
            seq_rel, seq_abs = c.sequential.relative, c.sequential.absolute
            ccount = getattr(m.variants[control], "count", None)
            tcount = getattr(m.variants[c.variant], "count", None)
            interval = decision_interval(report, m, c) if report.options is not None else None
            status, action = _status(report, m.name, m.role, c.variant)
            yield {
                "metric": m.name, "role": m.role, "direction": m.direction,
                "variant": c.variant, "control_units": m.variants[control].units,
                "treatment_units": m.variants[c.variant].units,
                "control_estimate": c.control_estimate, "treatment_estimate": c.treatment_estimate,
                "absolute_effect": _get(c.absolute, "estimate"),
                "absolute_ci_lower": _get(c.absolute, "ci_lower"),
                "absolute_ci_upper": _get(c.absolute, "ci_upper"),
                "relative_effect": _get(c.relative, "estimate"),
                "relative_ci_lower": _get(c.relative, "ci_lower"),
                "relative_ci_upper": _get(c.relative, "ci_upper"),
                "p_value": c.p_value, "adjusted_p_value": c.adjusted_p_value,
                "significant": c.significant,
                "sequential_relative_ci_lower": _get(seq_rel, "ci_lower"),
                "sequential_relative_ci_upper": _get(seq_rel, "ci_upper"),
                "sequential_p_value": c.sequential.p_value, "chance_to_win": c.chance_to_win,
                "error": str(c.error or c.relative_error or ""),
                "decision": decision, "margin": m.margin,
                "counted": _get(ccount or tcount, "counted"), "control_numerator": _get(ccount, "numerator"),
                "control_denominator": _get(ccount, "denominator"),
                "treatment_numerator": _get(tcount, "numerator"),
                "treatment_denominator": _get(tcount, "denominator"), "count_of": _get(ccount or tcount, "of"),
                "sequential_absolute_ci_lower": _get(seq_abs, "ci_lower"),
                "sequential_absolute_ci_upper": _get(seq_abs, "ci_upper"),
                "verdict_interval": _get(interval, "scale"), "status": status, "action": action,
            }


def render_csv(report: Report) -> str:
    """The results table as CSV text (empty cells for undefined values, errors explained)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, lineterminator=_LINE_END)
    writer.writeheader()
    for row in result_rows(report):
        writer.writerow({k: "" if v is None else safe_cell(v) for k, v in row.items()})
    return buf.getvalue()


def export_statement(table: str, experiment_id: int, experiment_key: str) -> Any:
    """The SELECT behind an export; ``table`` not in EXPORT_TABLES is a 422 naming ``table``.

    ``events`` exports the events that can concern the experiment: those of units it exposed
    (any phase) or naming it in ``experiment_key`` (attribution itself is the report's job).
    """
    if table == "exposures":
        return select(Exposure.__table__).where(Exposure.experiment_id == experiment_id).order_by(
            Exposure.phase, Exposure.unit_id)
    if table == "requests":
        return select(RequestLog.__table__).where(RequestLog.experiment_id == experiment_id).order_by(
            RequestLog.started_at, RequestLog.request_id)
    if table == "events":
        exposed = select(Exposure.unit_id).where(Exposure.experiment_id == experiment_id)
        return select(Event.__table__).where(or_(Event.unit_id.in_(exposed),
                                                 Event.experiment_key == experiment_key)).order_by(Event.id)
    raise ValidationError("table", f"must be one of {', '.join(EXPORT_TABLES)}")


def export_csv(engine: Engine, table: str, experiment_id: int, experiment_key: str,
               batch: int = _BATCH) -> Iterator[str]:
    """Stream a raw table as CSV chunks (header first). Validates ``table`` before streaming."""
    stmt = export_statement(table, experiment_id, experiment_key)

    def generate() -> Iterator[str]:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator=_LINE_END)
            writer.writerow(result.keys())
            for part in result.partitions():
                for row in part:
                    writer.writerow([_cell(v) for v in row])
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
            yield buf.getvalue()

    return generate()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return safe_cell(value)
