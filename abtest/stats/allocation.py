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

``tests/stats/test_allocation.py`` shows both in a simulation with a time trend: the naive
difference is biased, the pooled one is not, and its interval covers at the nominal rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from scipy import stats as sps

from ._common import check_alpha
from .srm import DEFAULT_SRM_THRESHOLD, srm_test

__all__ = ["Cohort", "CohortSRM", "PooledEffect", "cohort_srm", "pooled_effect", "naive_difference"]


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
