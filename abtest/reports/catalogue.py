"""The built-in metrics, each defined once: the validator, the queries and the report read them.

A built-in metric is computed from the request log (no event). Every built-in is analysed per
unit (the randomization unit): a ``ratio`` metric is ``sum over units of m_i / sum of d_i``
with a delta-method variance; a ``quantile`` metric is read from a per-variant sketch with a
cluster-aware CI. Its entry says:

``source``     which per-unit numerator and denominator (``ratio``) or which sketch
               (``quantile``) it reads; see :data:`RATIO_SOURCES` and :data:`QUANTILE_SOURCES`
``shape``      ``ratio`` (per-unit sums, delta method) or ``quantile`` (a sketch)
``direction``  what counts as better (``decrease`` for all built-ins but ``tokens_per_s``)
``quantile``   the level of a ``quantile`` metric
``unit``       of the values: ``ms``, ``share``, ``tokens``, ``tokens/s`` or ``price`` (the
               currency of the engines' ``cost_per_hour``)
``recorded``   what the request log must hold for a request to count (a column that rows
               logged before it existed have NULL; those requests are left out, and the
               report's ``note`` says how many)

Definitions (``ok``: requests with status ``ok``; enrolled, non-shadow, current phase):

``latency_ms``        ok requests' latency (arrival in the API to the answer)
``ttft_ms``           ok requests' time to first token (start of the engine batch to the
                      request's first token)
``completion_tokens`` tokens generated per ok request
``tokens_per_s``      decode rate: per unit, the tokens generated after the first one
                      (``completion_tokens - 1``) over the seconds from the first token to the
                      last (``decode_ms / 1000``), summed over its ok requests
``truncation_rate``   share of ok requests that stopped at ``max_new_tokens``
                      (``finish_reason = "length"``)
``engine_ms``         the request's share of its batches' engine time (``compute_ms``: each
                      engine step's time divided by the rows generating in it, summed over the
                      request's steps); not the ``requests.engine_ms`` column, which is the
                      wait from dispatch to reply
``cost_per_request``  ``cost`` per ok request: ``compute_ms / 3.6e6 * cost_per_hour`` of the
                      engine when the request was logged
``error_rate``        errors over requests (see :mod:`abtest.reports.statuses`)

A new built-in is one entry here (a quantile of an existing source needs nothing else). Pure:
no Flask, no SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BuiltinMetric", "BUILTINS", "BUILTIN_BY_NAME", "RATIO_SOURCES", "QUANTILE_SOURCES", "COST_SOURCES",
           "builtin_directions", "quantile_levels", "ratio_metrics"]

# A ratio source: (numerator, denominator) per unit, as named in queries.unit_rows.
RATIO_SOURCES: dict[str, tuple[str, str]] = {
    "latency": ("lat", "ok"), "errors": ("err", "tot"), "ttft": ("ttft", "ttft_n"),
    "tokens": ("tokens", "tokens_n"), "decode": ("dec_tokens", "dec_s"), "truncation": ("trunc", "finish_n"),
    "compute": ("compute", "compute_n"), "cost": ("cost", "cost_n"),
}
# A quantile source: the request log's column of the values in its sketch (one code path each).
QUANTILE_SOURCES: dict[str, str] = {"latency": "latency_ms", "ttft": "ttft_ms"}
# Sources whose values are a price: unavailable (never zero) when an engine has no price.
COST_SOURCES = frozenset({"cost"})


@dataclass(frozen=True)
class BuiltinMetric:
    name: str
    source: str  # a key of RATIO_SOURCES (ratio) or QUANTILE_SOURCES (quantile)
    shape: str  # ratio | quantile
    direction: str  # increase | decrease
    unit: str  # ms | share | tokens | tokens/s | price
    quantile: float | None = None
    recorded: str | None = None  # what older rows lack: the note's "logged before <recorded> ..."


BUILTINS: tuple[BuiltinMetric, ...] = (
    BuiltinMetric("latency_ms", "latency", "ratio", "decrease", "ms"),
    BuiltinMetric("latency_p50_ms", "latency", "quantile", "decrease", "ms", 0.5),
    BuiltinMetric("latency_p95_ms", "latency", "quantile", "decrease", "ms", 0.95),
    BuiltinMetric("latency_p99_ms", "latency", "quantile", "decrease", "ms", 0.99),
    BuiltinMetric("error_rate", "errors", "ratio", "decrease", "share"),
    BuiltinMetric("ttft_ms", "ttft", "ratio", "decrease", "ms", recorded="times to first token"),
    BuiltinMetric("ttft_p50_ms", "ttft", "quantile", "decrease", "ms", 0.5, recorded="times to first token"),
    BuiltinMetric("ttft_p95_ms", "ttft", "quantile", "decrease", "ms", 0.95, recorded="times to first token"),
    BuiltinMetric("completion_tokens", "tokens", "ratio", "decrease", "tokens", recorded="token counts"),
    BuiltinMetric("tokens_per_s", "decode", "ratio", "increase", "tokens/s", recorded="decode times"),
    BuiltinMetric("truncation_rate", "truncation", "ratio", "decrease", "share", recorded="finish reasons"),
    BuiltinMetric("engine_ms", "compute", "ratio", "decrease", "ms", recorded="engine compute times"),
    BuiltinMetric("cost_per_request", "cost", "ratio", "decrease", "price", recorded="engine compute times"),
)
BUILTIN_BY_NAME: dict[str, BuiltinMetric] = {m.name: m for m in BUILTINS}


def builtin_directions() -> dict[str, str]:
    """Name -> direction, in the report's order."""
    return {m.name: m.direction for m in BUILTINS}


def quantile_levels(source: str | None = None) -> dict[str, float]:
    """Name -> level of the quantile metrics (of one source, or all), in the report's order."""
    return {m.name: float(m.quantile) for m in BUILTINS if m.shape == "quantile" and m.quantile is not None
            and source in (None, m.source)}


def ratio_metrics() -> tuple[BuiltinMetric, ...]:
    return tuple(m for m in BUILTINS if m.shape == "ratio")
