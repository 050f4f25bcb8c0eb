"""Fixed-horizon one-sided tests against a margin: non-inferiority and equivalence (TOST).

Both work on the same sufficient statistics and the same Welch / delta-method definitions as
:func:`abtest.stats.welch_test` (see :mod:`abtest.stats.frequentist`). Every effect is
*oriented* so that positive means better: for a lower-is-better metric the difference is
negated. With oriented effect ``D`` (absolute ``m_t - m_c`` or relative ``m_t / m_c - 1``), its
standard error ``se``, Welch-Satterthwaite ``df`` and a margin ``M >= 0`` on the same scale
(metric units when ``relative`` is False, a fraction of the control mean when True):

Non-inferiority (H0: ``D <= -M``, H1: ``D > -M``)
    ``t = (D + M) / se``,  ``p = P(T_df > t)``,  one-sided ``(1 - alpha)`` lower bound
    ``D - t_{1-alpha, df} se``; non-inferior at level ``alpha`` exactly when the bound is > -M.
    For an absolute margin this is ``scipy.stats.ttest_ind_from_stats`` with the treatment
    mean shifted by the margin, ``equal_var=False, alternative="greater"`` (statsmodels'
    ``CompareMeans.ttest_ind(alternative="larger", usevar="unequal", value=-M)``).
Equivalence, two one-sided tests (H0: ``|D| >= M``)
    ``p = max(P(T_df > (D + M) / se), P(T_df < (D - M) / se))``; equivalent at level ``alpha``
    exactly when the ``(1 - 2 alpha)`` two-sided interval lies inside ``(-M, M)``. For an
    absolute margin this is statsmodels' ``ttost_ind(..., usevar="unequal")``.

These are the fixed-horizon figures (valid when looked at once, at the planned sample). The
report *decides* on the always-valid interval of :mod:`abtest.stats.sequential`, which stays
valid however often it is looked at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as sps

from ._common import check_alpha, check_finite
from .frequentist import welch_test
from .sufficient import Estimable

__all__ = ["EquivalenceResult", "NonInferiorityResult", "equivalence_test", "noninferiority_test"]


@dataclass(frozen=True)
class NonInferiorityResult:
    """One-sided test of "the treatment is at most ``margin`` worse".

    ``estimate``, ``lower_bound`` and ``margin`` are oriented (positive = better) and on the
    test's scale (``relative``: fractions of the control mean). ``df`` is None when undefined.
    """

    estimate: float | None
    se: float | None
    df: float | None
    margin: float
    relative: bool
    alpha: float
    statistic: float | None
    p_value: float | None
    lower_bound: float | None
    error: str | None = None

    @property
    def non_inferior(self) -> bool:
        return self.p_value is not None and self.p_value < self.alpha


@dataclass(frozen=True)
class EquivalenceResult:
    """Two one-sided tests of ``-margin < D < margin``; bounds of the ``(1 - 2 alpha)`` CI."""

    estimate: float | None
    se: float | None
    df: float | None
    margin: float
    relative: bool
    alpha: float
    p_lower: float | None
    p_upper: float | None
    p_value: float | None
    ci_lower: float | None
    ci_upper: float | None
    error: str | None = None

    @property
    def equivalent(self) -> bool:
        return self.p_value is not None and self.p_value < self.alpha


def _oriented(control: Estimable, treatment: Estimable, relative: bool,
              higher_is_better: bool) -> tuple[float, float, float] | str:
    """(oriented estimate, se, df) of the Welch comparison, or the reason it is undefined."""
    cmp = welch_test(control, treatment)
    if cmp.error is not None:
        return cmp.error
    effect = cmp.relative if relative else cmp.absolute
    if effect is None:
        return cmp.relative_error or "no estimate available"
    est = effect.estimate if higher_is_better else -effect.estimate
    return est, effect.se, math.inf if effect.df is None else effect.df


def _sf(x: float, df: float) -> float:
    return float(sps.t.sf(x, df) if math.isfinite(df) else sps.norm.sf(x))


def _cdf(x: float, df: float) -> float:
    return float(sps.t.cdf(x, df) if math.isfinite(df) else sps.norm.cdf(x))


def _ppf(q: float, df: float) -> float:
    return float(sps.t.ppf(q, df) if math.isfinite(df) else sps.norm.ppf(q))


def _margin(margin: float) -> float:
    if not check_finite(margin, "margin") >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    return float(margin)


def noninferiority_test(control: Estimable, treatment: Estimable, margin: float,
                        relative: bool = True, higher_is_better: bool = True,
                        alpha: float = 0.05) -> NonInferiorityResult:
    """One-sided Welch test of H0 "treatment worse by at least ``margin``" (see module doc)."""
    alpha, margin = check_alpha(alpha), _margin(margin)
    got = _oriented(control, treatment, relative, higher_is_better)
    if isinstance(got, str):
        return NonInferiorityResult(None, None, None, margin, relative, alpha, None, None, None, got)
    est, se, df = got
    stat = (est + margin) / se
    p = _sf(stat, df)
    bound = est - _ppf(1.0 - alpha, df) * se
    return NonInferiorityResult(est, se, df if math.isfinite(df) else None, margin, relative, alpha,
                                stat, p, bound)


def equivalence_test(control: Estimable, treatment: Estimable, margin: float,
                     relative: bool = True, higher_is_better: bool = True,
                     alpha: float = 0.05) -> EquivalenceResult:
    """Two one-sided Welch tests of ``|D| < margin`` (see module doc); ``margin`` > 0."""
    alpha, margin = check_alpha(alpha), _margin(margin)
    if margin == 0:
        raise ValueError("an equivalence test needs a margin > 0")
    if not alpha < 0.5:
        raise ValueError("alpha must be < 0.5 for two one-sided tests")
    got = _oriented(control, treatment, relative, higher_is_better)
    if isinstance(got, str):
        return EquivalenceResult(None, None, None, margin, relative, alpha, None, None, None, None, None,
                                 got)
    est, se, df = got
    p_lower = _sf((est + margin) / se, df)
    p_upper = _cdf((est - margin) / se, df)
    half = _ppf(1.0 - alpha, df) * se
    return EquivalenceResult(est, se, df if math.isfinite(df) else None, margin, relative, alpha,
                             p_lower, p_upper, max(p_lower, p_upper), est - half, est + half)
