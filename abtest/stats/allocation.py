"""Analysis when the allocation changed during an experiment (sticky bucketing).

With sticky bucketing a weight change does not move enrolled units: units keep the variant
they were assigned in their *cohort* (the allocation period, i.e. phase, in which they were
first assigned), and only new units follow the new weights. The treatment's share then
differs between cohorts (a ramp 10 % -> 50 % makes the treatment mostly late units), and any
trend over time in the metric (novelty, seasonality, a growing user base) leaks into a naive
treatment-vs-control difference pooled over all units: it is biased.

Method (post-stratification by allocation period):

* **SRM** is checked per cohort, each against the weights its units were randomized with;
  the per-cohort Pearson statistics are summed (independent cohorts: chi-square with the
  summed degrees of freedom). Carried-over units are never tested against weights they were
  not drawn with.
* **Effect**: within a cohort, assignment is a plain randomization with fixed weights, so the
  difference of means ``d_k`` is unbiased for that cohort's effect, whatever the trend. The
  pooled estimate is ``sum_k w_k d_k`` with ``w_k = N_k / N`` (the cohort's share of all
  enrolled units: the average effect over the enrolled population) and variance
  ``sum_k w_k^2 (s_Tk^2 / n_Tk + s_Ck^2 / n_Ck)``; a normal interval around it.

The report applies the same pooling to its comparisons of any mean or ratio metric
(:func:`stratified_test`): per cohort the difference of means (ratio metrics: of the ratios,
delta-method variance), the standardized means ``C = sum_k w_k mean_Ck`` and
``T = sum_k w_k mean_Tk`` with ``w_k = N_k / N`` over the cohorts where both variants have at
least two units; absolute effect ``T - C`` (variance as above), relative lift ``T / C - 1`` by
the delta method (``Var T / C^2 + T^2 Var C / C^4``, the two arms being independent), normal
intervals and p-values.

``tests/stats/test_allocation.py`` shows both in a simulation with a time trend: the naive
difference is biased, the pooled one is not, and its interval covers at the nominal rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from scipy import stats as sps

from ._common import (
    MSG_EMPTY_VARIANT,
    MSG_TOO_FEW_UNITS,
    MSG_ZERO_BASELINE,
    MSG_ZERO_RELATIVE_VARIANCE,
    MSG_ZERO_VARIANCE,
    Effect,
    check_alpha,
)
from .frequentist import Comparison
from .srm import DEFAULT_SRM_THRESHOLD, srm_test

__all__ = ["Cohort", "CohortSRM", "PooledEffect", "CohortPart", "Stratified", "cohort_srm", "pooled_effect",
           "naive_difference", "stratified_test"]


@dataclass(frozen=True)
class Cohort:
    """The units first assigned in one allocation period: the weights they were drawn with
    (variant -> weight) and per variant their (count, sum, sum of squares) of the metric."""

    weights: Mapping[str, float]
    stats: Mapping[str, tuple[int, float, float]]

    def n(self, variant: str) -> int:
        return self.stats.get(variant, (0, 0.0, 0.0))[0]

    def mean_var(self, variant: str) -> tuple[float, float]:
        n, s, ss = self.stats.get(variant, (0, 0.0, 0.0))
        if n < 2:
            raise ValueError(f"cohort has {n} units of {variant!r}; need at least 2")
        mean = s / n
        return mean, max(0.0, (ss - n * mean * mean) / (n - 1))


@dataclass(frozen=True)
class CohortSRM:
    chi2: float
    df: int
    p_value: float
    flagged: bool
    per_cohort_p: tuple[float, ...]


def cohort_srm(cohorts: Sequence[Cohort], threshold: float = DEFAULT_SRM_THRESHOLD) -> CohortSRM:
    """Per-cohort SRM against each cohort's own weights, combined (see the module doc)."""
    results = []
    for c in cohorts:
        variants = [v for v, w in c.weights.items() if w > 0]
        if sum(c.n(v) for v in c.weights) == 0:
            continue
        results.append(srm_test([c.n(v) for v in variants], [c.weights[v] for v in variants], threshold))
    chi2, df = math.fsum(r.chi2 for r in results), sum(r.df for r in results)
    p = float(sps.chi2.sf(chi2, df)) if df else 1.0
    return CohortSRM(chi2, df, p, p < check_alpha(threshold), tuple(r.p_value for r in results))


@dataclass(frozen=True)
class PooledEffect:
    estimate: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    per_cohort: tuple[float, ...]


def pooled_effect(cohorts: Sequence[Cohort], control: str, treatment: str, alpha: float = 0.05) -> PooledEffect:
    """Treatment minus control, stratified by cohort and pooled by cohort size."""
    alpha = check_alpha(alpha)
    usable = [c for c in cohorts if c.n(control) >= 2 and c.n(treatment) >= 2]
    if not usable:
        raise ValueError("no cohort has two units of both variants")
    total = sum(sum(c.n(v) for v in c.stats) for c in usable)
    estimate, variance, parts = 0.0, 0.0, []
    for c in usable:
        (mt, vt), (mc, vc) = c.mean_var(treatment), c.mean_var(control)
        w = sum(c.n(v) for v in c.stats) / total
        d = mt - mc
        parts.append(d)
        estimate += w * d
        variance += w * w * (vt / c.n(treatment) + vc / c.n(control))
    se = math.sqrt(variance)
    z = float(sps.norm.ppf(1 - alpha / 2))
    p = float(2 * sps.norm.sf(abs(estimate) / se)) if se > 0 else (0.0 if estimate else 1.0)
    return PooledEffect(estimate, se, estimate - z * se, estimate + z * se, p, tuple(parts))


def naive_difference(cohorts: Sequence[Cohort], control: str, treatment: str) -> float:
    """Treatment mean minus control mean over all units, ignoring cohorts (biased under a trend
    when the allocation changed; for comparison only)."""
    def mean(v: str) -> float:
        n = sum(c.n(v) for c in cohorts)
        return sum(c.stats.get(v, (0, 0.0, 0.0))[1] for c in cohorts) / n
    return mean(treatment) - mean(control)


@dataclass(frozen=True)
class CohortPart:
    """One cohort of a :func:`stratified_test`: its units (every variant), per variant units,
    its weight in the pooled estimate (0 when unused) and its own difference of means."""

    cohort: str
    units: int
    variant_units: Mapping[str, int]
    weight: float
    difference: float | None
    se: float | None


@dataclass(frozen=True)
class Stratified:
    """The pooled comparison (a :class:`~abtest.stats.Comparison` whose means are the
    standardized ones) and the cohorts it pooled."""

    comparison: Comparison
    cohorts: tuple[CohortPart, ...]


def _normal_effect(estimate: float, se: float, alpha: float) -> Effect:
    z = float(sps.norm.ppf(1 - alpha / 2))
    p = float(2 * sps.norm.sf(abs(estimate) / se))
    return Effect(estimate, se, estimate - z * se, estimate + z * se, min(p, 1.0), None)


def _usable(stats: Any) -> bool:
    return stats.n >= 2 and math.isfinite(stats.mean) and math.isfinite(stats.variance)


def stratified_test(cohorts: Mapping[str, Mapping[str, Any]], control: str, treatment: str,
                    alpha: float = 0.05) -> Stratified:
    """Treatment vs control post-stratified by cohort (see the module doc).

    ``cohorts``: cohort label -> variant -> :class:`~abtest.stats.MeanStats` or
    :class:`~abtest.stats.RatioStats` of the units first assigned in that cohort. ``N_k`` is
    the cohort's units over every variant given. Cohorts where the control or the treatment has
    fewer than two units (or no defined mean) are left out, the weights renormalized over the
    others. Never raises for data states (the comparison's ``error`` says why).
    """
    alpha = check_alpha(alpha)
    sizes = {k: sum(int(s.n) for s in by.values()) for k, by in cohorts.items()}
    used = [k for k, by in cohorts.items() if control in by and treatment in by
            and _usable(by[control]) and _usable(by[treatment])]
    total = sum(sizes[k] for k in used)
    parts, c_mean, t_mean, c_var, t_var = [], 0.0, 0.0, 0.0, 0.0
    for k, by in cohorts.items():
        units = {v: int(s.n) for v, s in by.items()}
        if k not in used:
            parts.append(CohortPart(k, sizes[k], units, 0.0, None, None))
            continue
        c, t, w = by[control], by[treatment], sizes[k] / total
        vc, vt = c.variance / c.n, t.variance / t.n
        c_mean, t_mean = c_mean + w * c.mean, t_mean + w * t.mean
        c_var, t_var = c_var + w * w * vc, t_var + w * w * vt
        parts.append(CohortPart(k, sizes[k], units, w, t.mean - c.mean, math.sqrt(vt + vc)))
    n_c = sum(int(by[control].n) for k, by in cohorts.items() if k in used)
    n_t = sum(int(by[treatment].n) for k, by in cohorts.items() if k in used)
    if not used:
        empty = any(sum(int(by[v].n) for by in cohorts.values() if v in by) == 0 for v in (control, treatment))
        error = MSG_EMPTY_VARIANT if empty else MSG_TOO_FEW_UNITS
        return Stratified(Comparison(None, None, n_c, n_t, alpha, None, None, error=error), tuple(parts))
    base: dict[str, Any] = dict(control_mean=c_mean, treatment_mean=t_mean, n_control=n_c, n_treatment=n_t,
                                alpha=alpha)
    if not c_var + t_var > 0:
        return Stratified(Comparison(**base, absolute=None, relative=None, error=MSG_ZERO_VARIANCE), tuple(parts))
    absolute = _normal_effect(t_mean - c_mean, math.sqrt(c_var + t_var), alpha)
    if c_mean == 0:
        return Stratified(Comparison(**base, absolute=absolute, relative=None, relative_error=MSG_ZERO_BASELINE),
                          tuple(parts))
    rel_var = t_var / c_mean ** 2 + t_mean ** 2 * c_var / c_mean ** 4
    if not rel_var > 0:
        return Stratified(Comparison(**base, absolute=absolute, relative=None,
                                     relative_error=MSG_ZERO_RELATIVE_VARIANCE), tuple(parts))
    relative = _normal_effect(t_mean / c_mean - 1, math.sqrt(rel_var), alpha)
    return Stratified(Comparison(**base, absolute=absolute, relative=relative), tuple(parts))
