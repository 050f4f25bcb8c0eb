"""CUPED: regression adjustment on a pre-exposure covariate (Deng et al. 2013).

Each unit has its post-exposure value ``y_i`` and a covariate ``x_i``: the same metric over a
lookback window before its first exposure. Definitions (those of gbstats 0.8.0's
``RegressionAdjustedStatistic`` and ``compute_theta``, which the tests match to 1e-6):

Mean metrics (:class:`CupedMeanStats`, sums ``n, sum y, sum y^2, sum x, sum x^2, sum x y``):
    ``theta = Cov(y, x) / Var(x)`` computed on the *pooled* sums of control and treatment
    (n-1 denominators); the adjusted mean of a variant is ``ybar - theta * xbar`` and its
    per-unit variance ``V_y + theta^2 V_x - 2 theta C_yx`` (within the variant). When the pooled
    ``Var(x)`` or ``Var(y)`` is 0, ``theta = 0`` (no adjustment, as gbstats reverts).

Ratio metrics (:class:`CupedRatioStats`: post ``m_i / d_i``, pre ``a_i / b_i`` per unit):
    the delta method linearises each ratio per unit, ``l_i = (m_i - R d_i) / mu_d`` and
    ``k_i = (a_i - R_x b_i) / mu_b``, so ``Var(R) ~ V_l / n``; then the mean recipe on
    ``(l, k)``: pooled ``theta = C_lk / V_k`` (linearised at the pooled ratios), adjusted
    estimate ``R - theta R_x``, per-unit variance ``V_l + theta^2 V_k - 2 theta C_lk`` with
    ``C_lk = (C_ma - R_x C_mb - R C_da + R R_x C_db) / (mu_d mu_b)``. With ``d_i = b_i = 1``
    it is exactly the mean recipe.

The adjusted statistic (:class:`Adjusted`) is an :class:`~abtest.stats.sufficient.Estimable`
whose ``unadjusted_mean`` is the plain estimate: :func:`~abtest.stats.welch_test` takes the
difference of adjusted means and scales the relative lift by the control's unadjusted mean
(gbstats' ``frequentist_diff`` / ``frequentist_variance``). ``variance_reduction`` is
``1 - Var_adj(diff) / Var(diff)``; with a covariate of correlation ``rho`` it is about
``rho^2``, so the CI narrows by about ``sqrt(1 - rho^2)``.

Units without history (no record before their first exposure) carry the pooled covariate
mean of the units with history (:func:`impute_missing`), so they neither add nor remove
covariance: the adjustment comes from the units with history alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import ArrayLike

from ._common import check_count, check_finite
from .sufficient import MeanStats, RatioStats, _sample_covariance

__all__ = ["Adjusted", "CupedMeanStats", "CupedRatioStats", "cuped_adjust", "impute_missing",
           "variance_reduction"]


@dataclass(frozen=True)
class Adjusted:
    """A variant's regression-adjusted estimate: ``mean`` (adjusted), ``variance`` (per unit,
    adjusted), the plain ``unadjusted_mean`` / ``unadjusted_variance`` and the ``theta`` used."""

    n: int
    mean: float
    variance: float
    unadjusted_mean: float
    unadjusted_variance: float
    theta: float


def _checked(obj: object) -> None:
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        object.__setattr__(obj, f.name, check_count(value, f.name) if f.name == "n"
                           else check_finite(value, f.name))


@dataclass(frozen=True)
class CupedMeanStats:
    """Sums of a unit-level metric ``y`` and its pre-exposure covariate ``x`` over ``n`` units."""

    n: int
    sum: float
    sum_sq: float
    pre_sum: float
    pre_sum_sq: float
    cross_sum: float

    def __post_init__(self) -> None:
        _checked(self)

    @classmethod
    def from_values(cls, post: ArrayLike, pre: ArrayLike) -> "CupedMeanStats":
        y = np.asarray(post, dtype=float).ravel()
        x = np.asarray(pre, dtype=float).ravel()
        if x.shape != y.shape:
            raise ValueError("post and pre values must have the same length")
        return cls(int(y.size), float(y.sum()), float(y @ y), float(x.sum()), float(x @ x), float(x @ y))

    @property
    def post(self) -> MeanStats:
        return MeanStats(self.n, self.sum, max(self.sum_sq, 0.0))

    @property
    def pre(self) -> MeanStats:
        return MeanStats(self.n, self.pre_sum, max(self.pre_sum_sq, 0.0))

    @property
    def covariance(self) -> float:
        return _sample_covariance(self.n, self.sum, self.pre_sum, self.cross_sum)

    def __add__(self, other: "CupedMeanStats") -> "CupedMeanStats":
        return CupedMeanStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def theta_against(self, other: "CupedMeanStats") -> float:
        """gbstats' ``compute_theta``: pooled Cov(y, x) / Var(x); 0 when a pooled variance is 0."""
        joint = self + other
        v_x, v_y = joint.pre.variance, joint.post.variance
        if not (v_x > 0 and v_y > 0):
            return 0.0
        return joint.covariance / v_x

    def adjusted(self, theta: float) -> Adjusted:
        post, pre = self.post, self.pre
        if self.n <= 1:
            return Adjusted(self.n, post.mean, math.nan, post.mean, post.variance, theta)
        var = post.variance + theta * theta * pre.variance - 2.0 * theta * self.covariance
        return Adjusted(self.n, post.mean - theta * pre.mean, max(var, 0.0), post.mean, post.variance, theta)


_RATIO_FIELDS = ("num_sum", "num_sum_sq", "den_sum", "den_sum_sq", "cross_sum")


@dataclass(frozen=True)
class CupedRatioStats:
    """Sums of a ratio metric (``m_i / d_i`` per unit after exposure) and of the same ratio
    before it (``a_i / b_i``): the post and pre :class:`RatioStats` fields, then the four
    cross-sums ``sum m a``, ``sum m b``, ``sum d a``, ``sum d b``."""

    n: int
    num_sum: float
    num_sum_sq: float
    den_sum: float
    den_sum_sq: float
    cross_sum: float
    pre_num_sum: float
    pre_num_sum_sq: float
    pre_den_sum: float
    pre_den_sum_sq: float
    pre_cross_sum: float
    num_pre_num: float
    num_pre_den: float
    den_pre_num: float
    den_pre_den: float

    def __post_init__(self) -> None:
        _checked(self)

    @classmethod
    def from_values(cls, num: ArrayLike, den: ArrayLike, pre_num: ArrayLike,
                    pre_den: ArrayLike) -> "CupedRatioStats":
        m, d, a, b = (np.asarray(v, dtype=float).ravel() for v in (num, den, pre_num, pre_den))
        if not m.shape == d.shape == a.shape == b.shape:
            raise ValueError("all per-unit arrays must have the same length")
        return cls(int(m.size), float(m.sum()), float(m @ m), float(d.sum()), float(d @ d), float(m @ d),
                   float(a.sum()), float(a @ a), float(b.sum()), float(b @ b), float(a @ b),
                   float(m @ a), float(m @ b), float(d @ a), float(d @ b))

    @property
    def post(self) -> RatioStats:
        return RatioStats(self.n, *(getattr(self, f) for f in _RATIO_FIELDS))

    @property
    def pre(self) -> RatioStats:
        return RatioStats(self.n, *(getattr(self, f"pre_{f}") for f in _RATIO_FIELDS))

    def __add__(self, other: "CupedRatioStats") -> "CupedRatioStats":
        return CupedRatioStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def covariance(self, r: float, r_x: float) -> float:
        """Covariance of the linearised post and pre ratios, linearised at ``r`` and ``r_x``."""
        n = self.n
        if n < 2 or self.den_sum <= 0 or self.pre_den_sum <= 0:
            return math.nan
        c = lambda s1, s2, s12: _sample_covariance(n, s1, s2, s12)  # noqa: E731
        c_ma = c(self.num_sum, self.pre_num_sum, self.num_pre_num)
        c_mb = c(self.num_sum, self.pre_den_sum, self.num_pre_den)
        c_da = c(self.den_sum, self.pre_num_sum, self.den_pre_num)
        c_db = c(self.den_sum, self.pre_den_sum, self.den_pre_den)
        return (c_ma - r_x * c_mb - r * c_da + r * r_x * c_db) / ((self.den_sum / n) * (self.pre_den_sum / n))

    def theta_against(self, other: "CupedRatioStats") -> float:
        """Pooled ``C_lk / V_k`` at the pooled ratios; 0 when a pooled variance is 0 or undefined."""
        joint = self + other
        post, pre = joint.post, joint.pre
        v_l, v_k = post.variance, pre.variance
        if not (v_k > 0 and v_l > 0):
            return 0.0
        return joint.covariance(post.mean, pre.mean) / v_k

    def adjusted(self, theta: float) -> Adjusted:
        post, pre = self.post, self.pre
        if self.n <= 1 or math.isnan(post.mean) or math.isnan(pre.mean):
            return Adjusted(self.n, post.mean, post.variance, post.mean, post.variance, theta)
        var = post.variance + theta * theta * pre.variance - 2.0 * theta * self.covariance(post.mean, pre.mean)
        return Adjusted(self.n, post.mean - theta * pre.mean, max(var, 0.0), post.mean, post.variance, theta)


CupedStats = CupedMeanStats | CupedRatioStats


def cuped_adjust(control: CupedStats, treatment: CupedStats) -> tuple[Adjusted, Adjusted]:
    """Both variants adjusted with their pooled theta (gbstats' definition, one theta per
    control-treatment pair). Compare the results with :func:`~abtest.stats.welch_test`."""
    if type(control) is not type(treatment):
        raise ValueError("control and treatment statistics must have the same shape")
    theta = control.theta_against(treatment)  # type: ignore[arg-type]
    return control.adjusted(theta), treatment.adjusted(theta)


def variance_reduction(control: Adjusted, treatment: Adjusted) -> float | None:
    """``1 - Var_adj(diff) / Var(diff)`` of the absolute difference (None when undefined)."""
    plain = control.unadjusted_variance / control.n + treatment.unadjusted_variance / treatment.n \
        if control.n > 0 and treatment.n > 0 else math.nan
    adj = control.variance / control.n + treatment.variance / treatment.n \
        if control.n > 0 and treatment.n > 0 else math.nan
    if not (math.isfinite(plain) and math.isfinite(adj) and plain > 0):
        return None
    return 1.0 - adj / plain


def impute_missing(with_history: CupedStats, without_history: MeanStats | RatioStats,
                   pooled_pre_mean: float | tuple[float, float]) -> CupedStats:
    """Add the units without history, each carrying the pooled covariate mean of the units with
    history (``xbar``; for a ratio ``(abar, bbar)``, the mean pre numerator and denominator)."""
    w = without_history
    if isinstance(with_history, CupedMeanStats):
        if not isinstance(w, MeanStats):
            raise ValueError("a mean metric's units without history come as MeanStats")
        x = float(pooled_pre_mean)  # type: ignore[arg-type]
        extra = CupedMeanStats(w.n, w.sum, w.sum_sq, w.n * x, w.n * x * x, x * w.sum)
        return with_history + extra
    if not isinstance(w, RatioStats):
        raise ValueError("a ratio metric's units without history come as RatioStats")
    a, b = pooled_pre_mean  # type: ignore[misc]
    n = w.n
    extra = CupedRatioStats(n, w.num_sum, w.num_sum_sq, w.den_sum, w.den_sum_sq, w.cross_sum,
                            n * a, n * a * a, n * b, n * b * b, n * a * b,
                            a * w.num_sum, b * w.num_sum, a * w.den_sum, b * w.den_sum)
    return with_history + extra
