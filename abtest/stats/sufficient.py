"""Sufficient statistics: what the SQL layer computes per variant.

Units (users) are randomized, so every variance here is computed across
*units*. Two shapes cover all metrics of the service:

``MeanStats`` — a unit-level metric: one value ``y_i`` per unit.
    SQL: ``COUNT(*), SUM(y), SUM(y*y)`` over the per-unit values, grouped by
    variant. Use it for conversion (``y_i`` in {0, 1}; then ``sum_sq == sum``),
    counts of events per unit and sums of event values per unit. Units that were
    exposed but have no event must be counted with ``y_i = 0``.

``RatioStats`` — a request-level metric randomized by unit: the estimate is
    ``sum_i m_i / sum_i d_i`` (e.g. latency = total latency of a unit's requests
    / its request count; error rate = errors / requests). SQL first groups by
    (variant, unit) to get ``m_i`` and ``d_i``, then by variant:
    ``COUNT(*), SUM(m), SUM(m*m), SUM(d), SUM(d*d), SUM(m*d)``. The variance
    uses the delta method across units, so a heavy user's many correlated
    requests count as one unit of evidence, not many.

Both expose ``n`` (units), ``mean`` (the estimate) and ``variance``: the
per-unit variance such that ``Var(mean) ~= variance / n``. All variances use
the ``n - 1`` (sample) denominator; for a proportion that is
``p (1 - p) n / (n - 1)`` — see :mod:`abtest.stats.frequentist` for why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike

from ._common import check_count, check_finite

__all__ = ["Estimable", "MeanStats", "RatioStats"]


@runtime_checkable
class Estimable(Protocol):
    """Anything with a unit count, a point estimate and a per-unit variance."""

    @property
    def n(self) -> int: ...

    @property
    def mean(self) -> float: ...

    @property
    def variance(self) -> float: ...


def _sample_variance(n: int, total: float, total_sq: float) -> float:
    """n-1 variance from sums, clamped at 0 against floating-point cancellation."""
    if n < 2:
        return math.nan
    return max((total_sq - total * total / n) / (n - 1), 0.0)


def _sample_covariance(n: int, sum_x: float, sum_y: float, sum_xy: float) -> float:
    if n < 2:
        return math.nan
    return (sum_xy - sum_x * sum_y / n) / (n - 1)


@dataclass(frozen=True)
class MeanStats:
    """Unit-level mean metric: ``n`` units, ``sum`` and ``sum_sq`` of their values.

    Raises ValueError for a negative or fractional ``n``, non-finite sums or a
    negative ``sum_sq``. ``mean`` and ``variance`` are NaN when undefined
    (n == 0, resp. n < 2); comparisons turn that into an ``error`` message.
    """

    n: int
    sum: float
    sum_sq: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", check_count(self.n, "n"))
        object.__setattr__(self, "sum", check_finite(self.sum, "sum"))
        object.__setattr__(self, "sum_sq", check_finite(self.sum_sq, "sum_sq"))
        if self.sum_sq < 0:
            raise ValueError(f"sum_sq must be >= 0, got {self.sum_sq!r}")

    @classmethod
    def proportion(cls, n: int, successes: int) -> "MeanStats":
        """Binary metric (e.g. conversion): ``successes`` of ``n`` units."""
        k = check_count(successes, "successes")
        if k > check_count(n, "n"):
            raise ValueError(f"successes ({k}) cannot exceed n ({n})")
        return cls(n=n, sum=k, sum_sq=k)

    @classmethod
    def from_values(cls, values: ArrayLike) -> "MeanStats":
        """Sufficient statistics of raw per-unit values (for analysts and tests)."""
        y = np.asarray(values, dtype=float).ravel()
        return cls(n=int(y.size), sum=float(y.sum()), sum_sq=float(np.dot(y, y)))

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n > 0 else math.nan

    @property
    def variance(self) -> float:
        return _sample_variance(self.n, self.sum, self.sum_sq)

    def __add__(self, other: "MeanStats") -> "MeanStats":
        """Pool two disjoint sets of units (e.g. two days of data)."""
        return MeanStats(self.n + other.n, self.sum + other.sum, self.sum_sq + other.sum_sq)


@dataclass(frozen=True)
class RatioStats:
    """Ratio metric ``sum(m_i) / sum(d_i)`` over ``n`` randomized units.

    Fields are the per-unit sums of the numerator ``m`` and denominator ``d``:
    ``num_sum = sum m_i``, ``num_sum_sq = sum m_i**2``, ``den_sum = sum d_i``,
    ``den_sum_sq = sum d_i**2``, ``cross_sum = sum m_i * d_i``.

    ``variance`` is the delta-method per-unit variance
    ``(V_m - 2 r C_md + r**2 V_d) / mu_d**2`` with ``r = mean``,
    ``mu_d = den_sum / n`` and n-1 (co)variances — the same formula as
    gbstats' ``RatioStatistic``.
    """

    n: int
    num_sum: float
    num_sum_sq: float
    den_sum: float
    den_sum_sq: float
    cross_sum: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", check_count(self.n, "n"))
        for name in ("num_sum", "num_sum_sq", "den_sum", "den_sum_sq", "cross_sum"):
            object.__setattr__(self, name, check_finite(getattr(self, name), name))
        if self.num_sum_sq < 0 or self.den_sum_sq < 0:
            raise ValueError("sums of squares must be >= 0")
        if self.den_sum < 0:
            raise ValueError(f"den_sum must be >= 0 (counts of requests), got {self.den_sum!r}")

    @classmethod
    def from_values(cls, numerators: ArrayLike, denominators: ArrayLike) -> "RatioStats":
        """Sufficient statistics of per-unit numerators and denominators."""
        m = np.asarray(numerators, dtype=float).ravel()
        d = np.asarray(denominators, dtype=float).ravel()
        if m.shape != d.shape:
            raise ValueError("numerators and denominators must have the same length")
        return cls(
            n=int(m.size),
            num_sum=float(m.sum()),
            num_sum_sq=float(np.dot(m, m)),
            den_sum=float(d.sum()),
            den_sum_sq=float(np.dot(d, d)),
            cross_sum=float(np.dot(m, d)),
        )

    @property
    def mean(self) -> float:
        return self.num_sum / self.den_sum if self.den_sum > 0 else math.nan

    def scaled_to(self, n: int) -> "RatioStats":
        """The same per-unit means and (co)variances for a population of ``n`` units.

        For statistics computed on a uniform random sample of ``self.n`` units out of ``n``:
        every sum is multiplied by ``n / self.n``, so ``variance`` (up to the factor
        ``(self.n - 1) n / (self.n (n - 1))``) stays the sample's while ``variance / n``
        becomes the population's sampling variance.
        """
        n = check_count(n, "n")
        if self.n == 0:
            raise ValueError("cannot scale statistics of zero units")
        c = n / self.n
        return RatioStats(n, self.num_sum * c, self.num_sum_sq * c, self.den_sum * c,
                          self.den_sum_sq * c, self.cross_sum * c)

    @property
    def variance(self) -> float:
        if self.n < 2 or self.den_sum <= 0:
            return math.nan
        n = self.n
        mu_d = self.den_sum / n
        r = self.num_sum / self.den_sum
        v_m = _sample_variance(n, self.num_sum, self.num_sum_sq)
        v_d = _sample_variance(n, self.den_sum, self.den_sum_sq)
        c_md = _sample_covariance(n, self.num_sum, self.den_sum, self.cross_sum)
        return max((v_m - 2.0 * r * c_md + r * r * v_d) / (mu_d * mu_d), 0.0)

    def __add__(self, other: "RatioStats") -> "RatioStats":
        """Pool two disjoint sets of units."""
        return RatioStats(
            self.n + other.n,
            self.num_sum + other.num_sum,
            self.num_sum_sq + other.num_sum_sq,
            self.den_sum + other.den_sum,
            self.den_sum_sq + other.den_sum_sq,
            self.cross_sum + other.cross_sum,
        )
