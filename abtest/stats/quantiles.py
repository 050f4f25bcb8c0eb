"""Cluster-aware quantiles (p50/p95/p99 latency) with confidence intervals.

Requests of one unit are correlated (a user on a slow network is slow on all
requests), so an i.i.d. CI for a request-level quantile is too narrow. We use
the outer CI of Deng, Knoblich & Yu (2018), as GrowthBook and Eppo do: the
sample quantile ``x_hat`` at level ``q`` satisfies
``F_hat(x_hat) ~= q``, where ``F_hat(x) = sum_i s_i(x) / sum_i d_i`` is a
ratio metric over units (``s_i(x)`` = requests of unit ``i`` with value
``<= x``, ``d_i`` = its requests). Its delta-method variance ``sigma_p^2``
across units (``RatioStats.variance / n_units``) accounts for clustering, and
the order statistics at ranks ``N (q -+ z sigma_p)`` bracket the quantile with
coverage ``1 - alpha``.

What the report layer computes, per variant and level ``q`` (4 steps):

1. ``N`` ok requests and ``x_hat = percentile_cont(q)``: from the variant's
   :class:`~abtest.stats.LatencySketch` (0.1 % relative accuracy; the raw-array
   reference is :func:`~abtest.stats.capping.percentile_cont`).
2. Per unit ``s_i = SUM(CASE WHEN latency_ms <= :x_hat THEN 1 ELSE 0 END)``,
   ``d_i = COUNT(*)``; then per variant the :class:`RatioStats` sums
   ``COUNT(*), SUM(s), SUM(s*s), SUM(d), SUM(d*d), SUM(s*d)`` ("indicator"),
   in SQL over the request log, or over a uniform random sample of units with
   :meth:`RatioStats.scaled_to` (the per-unit variance is estimated on the
   sample and divided by the full unit count; pass ``n_requests=N`` to
   :func:`quantile_estimate`).
3. ``ranks = quantile_ranks(q, N, indicator, alpha)``; the values at the
   1-based ascending ranks ``ranks.rank_lower`` and ``ranks.rank_upper``
   (:meth:`LatencySketch.values_at_ranks`, or exact order statistics).
4. ``quantile_estimate(q, x_hat, x_lower, x_upper, indicator, alpha)`` per
   variant and ``compare_quantiles(control, treatment)`` for the difference.

All levels share the scans: step 2 is one GROUP BY unit with one ``CASE`` sum
per level.

The CI for the difference (and relative lift) treats the two variants'
estimates as independent normals with ``se = (x_upper - x_lower) / (2 z)``
(the approach of GrowthBook's ``QuantileClusteredStatistic``).
:func:`quantile_from_values` performs the same four steps on raw numpy arrays;
it is the reference the tests check coverage with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

from ._common import (
    MSG_EMPTY_VARIANT,
    MSG_TOO_FEW_FOR_QUANTILE,
    MSG_TOO_FEW_UNITS,
    MSG_ZERO_VARIANCE,
    check_alpha,
    check_count,
    check_finite,
    check_probability,
)
from .capping import percentile_cont
from .frequentist import Comparison, compare_estimates
from .sufficient import RatioStats

__all__ = [
    "QuantileEstimate",
    "QuantileRanks",
    "compare_quantiles",
    "quantile_estimate",
    "quantile_from_values",
    "quantile_ranks",
]


@dataclass(frozen=True)
class QuantileRanks:
    """Which order statistics bound the CI. ``valid`` is False when a rank
    fell outside ``[1, n_requests]`` (too few requests for this level)."""

    level: float
    n_requests: int
    sigma_p: float
    level_lower: float
    level_upper: float
    rank_lower: int
    rank_upper: int
    valid: bool


@dataclass(frozen=True)
class QuantileEstimate:
    """One variant's quantile with its cluster-aware CI and standard error."""

    level: float
    estimate: float | None
    n_requests: int
    n_units: int
    ci_lower: float | None
    ci_upper: float | None
    se: float | None
    error: str | None = None


def quantile_ranks(level: float, n_requests: int, indicator: RatioStats,
                   alpha: float = 0.05) -> QuantileRanks:
    """Ranks (1-based, ascending) of the order statistics bounding the CI.

    ``rank_lower = floor(N (q - z sigma_p))``, ``rank_upper = ceil(N (q + z
    sigma_p))``, clamped to ``[1, N]``. ``sigma_p`` is 0 (and ``valid`` False)
    when the indicator has fewer than 2 units or zero variance.
    """
    q, alpha = check_probability(level, "level"), check_alpha(alpha)
    n = check_count(n_requests, "n_requests")
    var = indicator.variance
    sigma = math.sqrt(var / indicator.n) if indicator.n >= 2 and var > 0 else 0.0
    z = float(sps.norm.ppf(1.0 - alpha / 2.0))
    lo_level, hi_level = q - z * sigma, q + z * sigma
    raw_lo, raw_hi = math.floor(n * lo_level), math.ceil(n * hi_level)
    valid = sigma > 0 and n > 0 and raw_lo >= 1 and raw_hi <= n
    lo = min(max(raw_lo, 1), max(n, 1))
    hi = min(max(raw_hi, 1), max(n, 1))
    return QuantileRanks(q, n, sigma, lo_level, hi_level, lo, hi, valid)


def quantile_estimate(level: float, estimate: float, value_lower: float, value_upper: float,
                      indicator: RatioStats, alpha: float = 0.05,
                      n_requests: int | None = None) -> QuantileEstimate:
    """Assemble a variant's quantile result from the SQL outputs (steps 1-3).

    ``n_requests`` is the request count ``N`` (default ``indicator.den_sum``; pass it when the
    indicator was computed on a sample of units and scaled with :meth:`RatioStats.scaled_to`).
    """
    q, alpha = check_probability(level, "level"), check_alpha(alpha)
    n = int(round(indicator.den_sum)) if n_requests is None else check_count(n_requests, "n_requests")
    k = indicator.n

    def failed(msg: str) -> QuantileEstimate:
        return QuantileEstimate(q, None if n == 0 else estimate, n, k, None, None, None, msg)

    if n == 0 or k == 0:
        return failed(MSG_EMPTY_VARIANT)
    if k < 2:
        return failed(MSG_TOO_FEW_UNITS)
    ranks = quantile_ranks(q, n, indicator, alpha)
    if ranks.sigma_p == 0.0:
        return failed(MSG_ZERO_VARIANCE)
    if not ranks.valid:
        return failed(MSG_TOO_FEW_FOR_QUANTILE)
    lo, hi = check_finite(value_lower, "value_lower"), check_finite(value_upper, "value_upper")
    if lo > hi:
        raise ValueError("value_lower must not exceed value_upper")
    se = (hi - lo) / (2.0 * float(sps.norm.ppf(1.0 - alpha / 2.0)))
    return QuantileEstimate(q, check_finite(estimate, "estimate"), n, k, lo, hi, se)


def compare_quantiles(control: QuantileEstimate, treatment: QuantileEstimate,
                      alpha: float = 0.05) -> Comparison:
    """Difference and relative lift of two variants' quantiles (normal approx.)."""
    alpha = check_alpha(alpha)
    if control.level != treatment.level:
        raise ValueError("cannot compare quantiles at different levels")
    q_c, se_c, q_t, se_t = control.estimate, control.se, treatment.estimate, treatment.se
    if q_c is None or se_c is None or q_t is None or se_t is None:
        error = control.error or treatment.error or MSG_TOO_FEW_FOR_QUANTILE
        return Comparison(q_c, q_t, control.n_units, treatment.n_units, alpha, None, None, error)
    return compare_estimates(q_c, se_c, control.n_units, q_t, se_t, treatment.n_units, alpha)


def quantile_from_values(values: ArrayLike, unit_ids: ArrayLike, level: float,
                         alpha: float = 0.05) -> QuantileEstimate:
    """Steps 1-4 of the SQL recipe on raw arrays (one entry per request)."""
    x = np.asarray(values, dtype=float).ravel()
    units = np.asarray(unit_ids).ravel()
    if x.shape != units.shape:
        raise ValueError("values and unit_ids must have the same length")
    if x.size == 0:
        empty = RatioStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        return quantile_estimate(level, math.nan, math.nan, math.nan, empty, alpha)
    x_hat = percentile_cont(x, level)
    _, inverse = np.unique(units, return_inverse=True)
    s = np.bincount(inverse, weights=(x <= x_hat).astype(float))
    d = np.bincount(inverse).astype(float)
    indicator = RatioStats.from_values(s, d)
    ranks = quantile_ranks(level, x.size, indicator, alpha)
    xs = np.sort(x)
    return quantile_estimate(level, x_hat, float(xs[ranks.rank_lower - 1]),
                             float(xs[ranks.rank_upper - 1]), indicator, alpha)
