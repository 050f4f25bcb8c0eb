"""Capping (winsorization) of heavy-tailed metrics such as latency.

A few pathological requests (timeouts, cold starts) can dominate the variance
of a mean latency and hide real effects. Capping replaces every value above a
cap ``c`` with ``c`` before the sums are taken. Rules that keep it unbiased
between variants:

1. The cap is chosen on the **pooled** data of all variants (never per
   variant), so a treatment cannot move its own cap.
2. The cap is a quantile level fixed before looking at results
   (default 0.99), optionally bounded by an absolute ceiling in the metric's
   unit (e.g. the request timeout).

How the report uses it: the pooled quantile is read from the merged latency
sketches of all variants (:class:`abtest.stats.LatencySketch`, 0.1 % relative
accuracy) and used as the cap (:func:`choose_cap` adds an absolute ceiling
for callers that want one); one pass over the request log then computes per
unit ``m_i = SUM(LEAST(latency_ms, :cap))``, ``d_i = COUNT(*)``, and the
RatioStats sums per variant.

``percentile_cont`` is the numpy reference for PostgreSQL's
``percentile_cont`` (linear interpolation between order statistics), and
:func:`percentile_cont_ranks` names the two order statistics it interpolates.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from ._common import check_finite

__all__ = ["DEFAULT_CAP_LEVEL", "apply_cap", "choose_cap", "percentile_cont", "percentile_cont_ranks"]

DEFAULT_CAP_LEVEL = 0.99


def percentile_cont_ranks(n: int, level: float) -> tuple[int, int, float]:
    """1-based ranks ``(lo, hi)`` and weight ``w`` such that PostgreSQL's
    ``percentile_cont(level)`` over ``n`` sorted values equals
    ``x[lo] + w * (x[hi] - x[lo])``. Lets a database without
    ``percentile_cont`` (SQLite) fetch just two rows with ``LIMIT 1 OFFSET rank-1``.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"level must be in [0, 1], got {level!r}")
    pos = 1.0 + level * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n)
    return lo, hi, pos - lo


def percentile_cont(values: ArrayLike, level: float) -> float:
    """PostgreSQL ``percentile_cont(level) WITHIN GROUP (ORDER BY value)``."""
    x = np.sort(np.asarray(values, dtype=float).ravel())
    if x.size == 0:
        return math.nan
    lo, hi, w = percentile_cont_ranks(int(x.size), level)
    return float(x[lo - 1] + w * (x[hi - 1] - x[lo - 1]))


def choose_cap(pooled_quantile: float, ceiling: float | None = None) -> float:
    """The cap to apply in SQL: the pooled quantile, bounded by ``ceiling``.

    ``pooled_quantile`` is ``percentile_cont(level)`` over all variants' values.
    """
    cap = check_finite(pooled_quantile, "pooled_quantile")
    if ceiling is not None:
        cap = min(cap, check_finite(ceiling, "ceiling"))
    return cap


def apply_cap(values: ArrayLike, cap: float) -> np.ndarray:
    """``LEAST(value, cap)`` in numpy, for analysts working on raw arrays."""
    return np.minimum(np.asarray(values, dtype=float), check_finite(cap, "cap"))
