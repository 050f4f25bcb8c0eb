"""The integers behind every rate of a report, from the same sufficient statistics as its estimates.

A rate reads better with its counts ("conversions 25 / 109 units"). Three kinds of metric are rates:

* a ``binary`` event metric: per unit 0 or 1, so the numerator is the sum of the unit values
  (:class:`~abtest.stats.MeanStats` ``sum``, rounded) over ``n`` exposed units;
* ``error_rate``: errors over requests (:class:`~abtest.stats.RatioStats` ``num_sum`` /
  ``den_sum``);
* ``truncation_rate``: completions cut at the token limit over ok requests (same).

:func:`with_counts` returns the report's metrics with each rate's per-variant estimates carrying a
:class:`~abtest.reports.model.Count`; other metrics are returned unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .. import stats as S
from .model import Count, Estimate, MetricResult

__all__ = ["RATE_COUNTS", "count_of", "with_counts"]

# Built-in ratio metrics that are rates: (what the numerator counts, what the denominator counts).
RATE_COUNTS: dict[str, tuple[str, str]] = {
    "error_rate": ("errors", "requests"),
    "truncation_rate": ("truncated", "ok requests"),
}
_BINARY = ("conversions", "units")


def count_of(metric: str, kind: str, stats: Any) -> Count | None:
    """The Count of one variant's statistics, or None when the metric is not a rate."""
    if kind == "binary" and isinstance(stats, S.MeanStats):
        counted, of = _BINARY
        return Count(counted, int(round(stats.sum)), int(stats.n), of)
    if metric in RATE_COUNTS and isinstance(stats, S.RatioStats):
        counted, of = RATE_COUNTS[metric]
        return Count(counted, int(round(stats.num_sum)), int(round(stats.den_sum)), of)
    return None


def with_counts(metrics: Sequence[MetricResult],
                stats: Mapping[str, Mapping[str, Any]]) -> tuple[MetricResult, ...]:
    """``metrics`` with counts filled in; ``stats[metric][variant]`` holds the statistics the
    variant's estimate was computed from (metrics absent from ``stats`` stay as they are)."""
    out = []
    for m in metrics:
        per_variant = stats.get(m.name)
        if per_variant is None:
            out.append(m)
            continue
        variants = {}
        for v, est in m.variants.items():
            count = count_of(m.name, m.kind, per_variant.get(v)) if isinstance(est, Estimate) else None
            variants[v] = est if count is None else replace(est, count=count)
        out.append(replace(m, variants=variants))
    return tuple(out)
