"""Fixed-horizon frequentist comparison of a treatment against the control.

Definitions (all two-sided, level ``alpha``):

Absolute difference ``D = m_t - m_c`` with
    ``se^2 = v_t / n_t + v_c / n_c`` where ``v`` is the per-unit variance with
    the n-1 denominator (``MeanStats.variance``) or the delta-method ratio
    variance (``RatioStats.variance``). Welch's t-test with Welch-Satterthwaite
    degrees of freedom ``df = se^4 / ((v_t/n_t)^2/(n_t-1) + (v_c/n_c)^2/(n_c-1))``.
    For mean metrics this is exactly ``scipy.stats.ttest_ind_from_stats(...,
    equal_var=False)`` (statistic and p-value) and statsmodels' unequal-variance
    ``tconfint_diff``.

Relative lift ``L = m_t / m_c - 1`` with the delta-method variance of the ratio
    of two independent means
    ``se^2 = v_t / (n_t m_c^2) + v_c m_t^2 / (n_c m_c^4)``, the same ``df``,
    its own t statistic ``L / se``, p-value and CI. This is exactly gbstats
    0.8's ``TwoSidedTTest`` with ``difference_type="relative"``.

Proportions use the same n-1 variance (``sum_sq == sum``), i.e.
``p (1 - p) n / (n - 1)``, so that one definition serves every metric and
agrees with scipy. gbstats' ``ProportionStatistic`` uses ``p (1 - p)``; the two
differ by the factor ``n / (n - 1)`` (1e-4 relative at n = 10,000), which is
why the tests compare proportions with gbstats' ``SampleMeanStatistic``.

The two p-values (absolute and relative) test the same null "no difference"
with different normalisations; they differ slightly in finite samples.
``Comparison.significant`` uses the absolute test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from ._common import (
    MSG_EMPTY_VARIANT,
    MSG_TOO_FEW_UNITS,
    MSG_ZERO_BASELINE,
    MSG_ZERO_DENOMINATOR,
    MSG_ZERO_RELATIVE_VARIANCE,
    MSG_ZERO_VARIANCE,
    Effect,
    check_alpha,
)
from .sufficient import Estimable

__all__ = [
    "Comparison",
    "VariantEstimate",
    "compare_estimates",
    "variant_estimate",
    "welch_df",
    "welch_test",
]


@dataclass(frozen=True)
class Comparison:
    """Treatment vs control. ``absolute``/``relative`` are None when undefined.

    ``error`` explains why nothing could be computed (then both effects are
    None); ``relative_error`` explains a missing relative lift alone.
    ``n_control``/``n_treatment`` are units (needed by sequential tests).
    Means are None when undefined (empty variant, zero denominator).
    """

    control_mean: float | None
    treatment_mean: float | None
    n_control: int
    n_treatment: int
    alpha: float
    absolute: Effect | None
    relative: Effect | None
    error: str | None = None
    relative_error: str | None = None

    @property
    def significant(self) -> bool:
        """True when the absolute difference is significant at ``alpha``."""
        return self.absolute is not None and self.absolute.p_value < self.alpha

    @property
    def n_total(self) -> int:
        return self.n_control + self.n_treatment


@dataclass(frozen=True)
class VariantEstimate:
    """One variant's estimate with a t(n-1) confidence interval."""

    n: int
    mean: float | None
    se: float | None
    ci_lower: float | None
    ci_upper: float | None
    error: str | None = None


def _or_none(x: float | None) -> float | None:
    """Undefined values travel as None (JSON-friendly), never as NaN."""
    return None if x is None or not math.isfinite(x) else float(x)


def welch_df(v_t: np.ndarray | float, n_t: np.ndarray | float,
             v_c: np.ndarray | float, n_c: np.ndarray | float) -> np.ndarray | float:
    """Welch-Satterthwaite degrees of freedom (vectorised over numpy arrays)."""
    a = np.divide(v_t, n_t)
    b = np.divide(v_c, n_c)
    return (a + b) ** 2 / (a * a / np.subtract(n_t, 1) + b * b / np.subtract(n_c, 1))


def _t_effect(estimate: float, se: float, df: float, alpha: float) -> Effect:
    """Two-sided t (normal when df is inf) p-value and CI for one effect."""
    crit = float(sps.t.ppf(1.0 - alpha / 2.0, df)) if math.isfinite(df) else float(
        sps.norm.ppf(1.0 - alpha / 2.0))
    stat = abs(estimate) / se
    p = float(2.0 * (sps.t.sf(stat, df) if math.isfinite(df) else sps.norm.sf(stat)))
    return Effect(estimate, se, estimate - crit * se, estimate + crit * se, min(p, 1.0),
                  df if math.isfinite(df) else None)


def _input_error(control: Estimable, treatment: Estimable) -> str | None:
    if control.n == 0 or treatment.n == 0:
        return MSG_EMPTY_VARIANT
    if control.n < 2 or treatment.n < 2:
        return MSG_TOO_FEW_UNITS
    if math.isnan(control.mean) or math.isnan(treatment.mean):
        return MSG_ZERO_DENOMINATOR
    if control.variance <= 0.0 and treatment.variance <= 0.0:
        return MSG_ZERO_VARIANCE
    return None


def welch_test(control: Estimable, treatment: Estimable, alpha: float = 0.05) -> Comparison:
    """Welch's t-test and delta-method relative lift of ``treatment`` vs ``control``.

    Works for :class:`MeanStats` (conversion, counts, sums) and
    :class:`RatioStats` (latency, error rate). Never raises for data states;
    raises ValueError for an invalid ``alpha``.
    """
    alpha = check_alpha(alpha)
    error = _input_error(control, treatment)
    base = dict(control_mean=_or_none(control.mean), treatment_mean=_or_none(treatment.mean),
                n_control=control.n, n_treatment=treatment.n, alpha=alpha)
    if error is not None:
        return Comparison(**base, absolute=None, relative=None, error=error)
    m_c, m_t = control.mean, treatment.mean
    v_c, v_t = control.variance, treatment.variance
    n_c, n_t = control.n, treatment.n
    df = float(welch_df(v_t, n_t, v_c, n_c))
    absolute = _t_effect(m_t - m_c, math.sqrt(v_t / n_t + v_c / n_c), df, alpha)
    if m_c == 0.0:
        return Comparison(**base, absolute=absolute, relative=None,
                          relative_error=MSG_ZERO_BASELINE)
    base_c = getattr(control, "unadjusted_mean", None)
    if base_c is None:
        rel_var = v_t / (n_t * m_c**2) + v_c * m_t**2 / (n_c * m_c**4)
        if not rel_var > 0.0:  # treatment constant at 0 (e.g. no conversion at all): no relative CI
            return Comparison(**base, absolute=absolute, relative=None, relative_error=MSG_ZERO_RELATIVE_VARIANCE)
        relative = _t_effect(m_t / m_c - 1.0, math.sqrt(rel_var), df, alpha)
        return Comparison(**base, absolute=absolute, relative=relative)
    # Regression-adjusted (CUPED): the difference of adjusted means over the control's plain
    # mean, with the plain means in the delta method (gbstats' frequentist_variance).
    base_t = getattr(treatment, "unadjusted_mean", m_t)
    if base_c == 0.0:
        return Comparison(**base, absolute=absolute, relative=None, relative_error=MSG_ZERO_BASELINE)
    rel_var = v_t / (n_t * base_c**2) + v_c * base_t**2 / (n_c * base_c**4)
    if not rel_var > 0.0:
        return Comparison(**base, absolute=absolute, relative=None, relative_error=MSG_ZERO_RELATIVE_VARIANCE)
    relative = _t_effect((m_t - m_c) / base_c, math.sqrt(rel_var), df, alpha)
    return Comparison(**base, absolute=absolute, relative=relative)


def compare_estimates(control_estimate: float, control_se: float, n_control: int,
                      treatment_estimate: float, treatment_se: float, n_treatment: int,
                      alpha: float = 0.05) -> Comparison:
    """Normal-approximation comparison of two independent estimates.

    Used for quantiles, whose estimates come with a standard error but no
    per-unit variance. Absolute: ``se^2 = se_t^2 + se_c^2``; relative (delta
    method): ``se^2 = se_t^2 / q_c^2 + se_c^2 q_t^2 / q_c^4``; normal reference
    (``Effect.df`` is None).
    """
    alpha = check_alpha(alpha)
    base = dict(control_mean=control_estimate, treatment_mean=treatment_estimate,
                n_control=n_control, n_treatment=n_treatment, alpha=alpha)
    se_abs = math.hypot(treatment_se, control_se)
    if not se_abs > 0.0:
        return Comparison(**base, absolute=None, relative=None, error=MSG_ZERO_VARIANCE)
    absolute = _t_effect(treatment_estimate - control_estimate, se_abs, math.inf, alpha)
    q_c, q_t = control_estimate, treatment_estimate
    if q_c == 0.0:
        return Comparison(**base, absolute=absolute, relative=None,
                          relative_error=MSG_ZERO_BASELINE)
    se_rel = math.sqrt(treatment_se**2 / q_c**2 + control_se**2 * q_t**2 / q_c**4)
    relative = _t_effect(q_t / q_c - 1.0, se_rel, math.inf, alpha)
    return Comparison(**base, absolute=absolute, relative=relative)


def variant_estimate(stats: Estimable, alpha: float = 0.05) -> VariantEstimate:
    """Per-variant estimate with a t(n-1) CI: ``mean +- t * sqrt(variance / n)``."""
    alpha = check_alpha(alpha)
    if stats.n < 2 or math.isnan(stats.mean):
        msg = MSG_EMPTY_VARIANT if stats.n == 0 else (
            MSG_TOO_FEW_UNITS if stats.n < 2 else MSG_ZERO_DENOMINATOR)
        return VariantEstimate(stats.n, _or_none(stats.mean), None, None, None, msg)
    se = math.sqrt(stats.variance / stats.n)
    half = float(sps.t.ppf(1.0 - alpha / 2.0, stats.n - 1)) * se
    return VariantEstimate(stats.n, stats.mean, se, stats.mean - half, stats.mean + half)
