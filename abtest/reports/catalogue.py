"""The built-in metrics, each defined once: the validator, the queries and the report read them.

A built-in metric is computed from the request log (no event). Its entry says:

``source``     what it measures: ``latency`` (ok requests' latency, ms) or ``errors``
               (the error rate's numerator and denominator, see :mod:`abtest.reports.statuses`)
``shape``      ``ratio`` (per-unit sums, delta method) or ``quantile`` (latency sketch)
``direction``  what counts as better (``decrease`` for all built-ins)
``quantile``   the level of a ``quantile`` metric
``unit``       of the values: ``ms`` or ``share``

A new built-in is one entry here (a quantile of latency needs nothing else). Pure: no Flask, no
SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BuiltinMetric", "BUILTINS", "BUILTIN_BY_NAME", "builtin_directions", "quantile_levels",
           "ratio_metrics"]


@dataclass(frozen=True)
class BuiltinMetric:
    name: str
    source: str  # latency | errors
    shape: str  # ratio | quantile
    direction: str  # increase | decrease
    unit: str  # ms | share
    quantile: float | None = None


BUILTINS: tuple[BuiltinMetric, ...] = (
    BuiltinMetric("latency_ms", "latency", "ratio", "decrease", "ms"),
    BuiltinMetric("latency_p50_ms", "latency", "quantile", "decrease", "ms", 0.5),
    BuiltinMetric("latency_p95_ms", "latency", "quantile", "decrease", "ms", 0.95),
    BuiltinMetric("latency_p99_ms", "latency", "quantile", "decrease", "ms", 0.99),
    BuiltinMetric("error_rate", "errors", "ratio", "decrease", "share"),
)
BUILTIN_BY_NAME: dict[str, BuiltinMetric] = {m.name: m for m in BUILTINS}


def builtin_directions() -> dict[str, str]:
    """Name -> direction, in the report's order."""
    return {m.name: m.direction for m in BUILTINS}


def quantile_levels() -> dict[str, float]:
    """Name -> level of the quantile metrics, in the report's order."""
    return {m.name: float(m.quantile) for m in BUILTINS if m.shape == "quantile" and m.quantile is not None}


def ratio_metrics() -> tuple[BuiltinMetric, ...]:
    return tuple(m for m in BUILTINS if m.shape == "ratio")
