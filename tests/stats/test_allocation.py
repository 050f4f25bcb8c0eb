"""Changed allocation with sticky bucketing: a simulation with a time trend shows the naive
pooled difference biased and the per-cohort pooled estimate unbiased with nominal coverage;
SRM is checked against each cohort's own weights. References: numpy simulation, scipy and
statsmodels (Welch per cohort)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from abtest.stats import MeanStats, RatioStats, welch_test
from abtest.stats.allocation import Cohort, cohort_srm, naive_difference, pooled_effect, stratified_test

EFFECT = 0.5
RAMP = ({"control": 0.9, "treatment": 0.1}, {"control": 0.5, "treatment": 0.5})


def _cohort(weights: dict[str, float], y: np.ndarray, treated: np.ndarray) -> Cohort:
    return Cohort(weights, {v: (int(m.sum()), float(y[m].sum()), float((y[m] ** 2).sum()))
                            for v, m in (("treatment", treated), ("control", ~treated))})


def simulate(rng: np.random.Generator, n: int = 4000) -> list[Cohort]:
    """Units arrive over two periods (a ramp from 10 % to 50 % treatment in the middle); the
    metric rises with arrival time (a trend of +2 over the experiment), and sticky units keep
    the variant of their period."""
    cohorts = []
    for k, weights in enumerate(RAMP):
        arrival = rng.uniform(k, k + 1, n)  # period k covers time [k, k+1)
        treated = rng.random(n) < weights["treatment"]
        y = 10 + 1.0 * arrival + EFFECT * treated + rng.normal(0, 1, n)
        cohorts.append(_cohort(weights, y, treated))
    return cohorts


def test_the_pooled_estimate_is_unbiased_under_a_time_trend_and_the_naive_one_is_not() -> None:
    rng = np.random.default_rng(20261201)
    runs = [simulate(rng) for _ in range(400)]
    pooled = [pooled_effect(c, "control", "treatment") for c in runs]
    naive = np.array([naive_difference(c, "control", "treatment") for c in runs])
    estimates = np.array([p.estimate for p in pooled])
    se_mc = estimates.std(ddof=1) / np.sqrt(len(runs))
    print(f"sticky simulation ({len(runs)} runs, true effect {EFFECT}): pooled mean {estimates.mean():.4f} "
          f"(MC se {se_mc:.4f}), naive mean {naive.mean():.4f}")
    assert abs(estimates.mean() - EFFECT) < 4 * se_mc  # unbiased
    # the treatment is mostly late units: the naive difference picks up the trend (about +0.47 here)
    assert naive.mean() - EFFECT > 20 * naive.std(ddof=1) / np.sqrt(len(runs))
    covered = np.mean([p.ci_low <= EFFECT <= p.ci_high for p in pooled])
    assert 0.92 <= covered <= 0.98  # nominal 95 %
    # the reported standard error matches the spread of the estimates
    assert np.mean([p.se for p in pooled]) == pytest.approx(estimates.std(ddof=1), rel=0.1)


def test_per_cohort_effects_match_statsmodels() -> None:
    rng = np.random.default_rng(3)
    cohorts, raw = [], []
    for weights in RAMP:
        treated = rng.random(500) < weights["treatment"]
        y = rng.normal(5, 2, 500) + 0.3 * treated
        cohorts.append(_cohort(weights, y, treated))
        raw.append((y[treated], y[~treated]))
    result = pooled_effect(cohorts, "control", "treatment")
    for d, (t, c) in zip(result.per_cohort, raw):
        assert d == pytest.approx(DescrStatsW(t).mean - DescrStatsW(c).mean, rel=1e-9)
    sizes = np.array([500, 500]) / 1000
    ses = [CompareMeans(DescrStatsW(t), DescrStatsW(c)).std_meandiff_separatevar for t, c in raw]
    assert result.se == pytest.approx(float(np.sqrt(np.sum(sizes ** 2 * np.array(ses) ** 2))), rel=1e-9)


def test_srm_is_checked_against_each_cohorts_own_weights() -> None:
    rng = np.random.default_rng(5)
    cohorts = simulate(rng)
    assert not cohort_srm(cohorts).flagged  # right: each cohort on its own weights
    # the mistake sticky bucketing invites: all units of phase 2 against the phase-2 weights
    pooled_counts = Cohort(RAMP[1], {v: (sum(c.n(v) for c in cohorts), 0.0, 0.0) for v in ("control", "treatment")})
    assert cohort_srm([pooled_counts]).flagged
    broken = Cohort(RAMP[1], {"control": (2300, 0.0, 0.0), "treatment": (1700, 0.0, 0.0)})
    assert cohort_srm([cohorts[0], broken]).flagged


def _ratio_reference(m: np.ndarray, d: np.ndarray) -> tuple[float, float]:
    """A ratio's estimate and the variance of its mean, by per-unit linearisation (numpy)."""
    r = m.sum() / d.sum()
    linear = (m - r * d) / d.mean()
    return float(r), float(linear.var(ddof=1) / len(m))


def test_stratified_test_matches_an_independent_per_cohort_computation() -> None:
    rng = np.random.default_rng(11)
    mean_cohorts, ratio_cohorts, ref = {}, {}, []
    for k, weights in enumerate(RAMP):
        n = 800 + 400 * k
        treated = rng.random(n) < weights["treatment"]
        y = (rng.random(n) < 0.2 + 0.1 * k + 0.05 * treated).astype(float)
        d = rng.poisson(3, n) + 1.0
        m = d * (100 + 20 * k - 5 * treated) + rng.normal(0, 30, n) * np.sqrt(d)
        mean_cohorts[str(k + 1)] = {v: MeanStats.from_values(y[mask]) for v, mask in
                                    (("control", ~treated), ("treatment", treated))}
        ratio_cohorts[str(k + 1)] = {v: RatioStats.from_values(m[mask], d[mask]) for v, mask in
                                     (("control", ~treated), ("treatment", treated))}
        ref.append((n, y, m, d, treated))
    total = sum(n for n, *_ in ref)
    for shape, cohorts in (("mean", mean_cohorts), ("ratio", ratio_cohorts)):
        got = stratified_test(cohorts, "control", "treatment")
        c_mean = t_mean = c_var = t_var = 0.0
        for n, y, m, d, treated in ref:
            w = n / total
            if shape == "mean":
                t_s, c_s = DescrStatsW(y[treated]), DescrStatsW(y[~treated])
                (mt, vt), (mc, vc) = (t_s.mean, t_s.var_ddof(1) / t_s.nobs), (c_s.mean, c_s.var_ddof(1) / c_s.nobs)
            else:
                (mt, vt), (mc, vc) = _ratio_reference(m[treated], d[treated]), _ratio_reference(m[~treated], d[~treated])
            c_mean, t_mean, c_var, t_var = c_mean + w * mc, t_mean + w * mt, c_var + w * w * vc, t_var + w * w * vt
        se = np.sqrt(c_var + t_var)
        a = got.comparison.absolute
        assert a is not None and got.comparison.relative is not None
        assert a.estimate == pytest.approx(t_mean - c_mean, rel=1e-9)
        assert a.se == pytest.approx(se, rel=1e-9)
        assert a.ci_lower == pytest.approx(t_mean - c_mean - norm.ppf(0.975) * se, rel=1e-9)
        assert a.p_value == pytest.approx(2 * norm.sf(abs(t_mean - c_mean) / se), rel=1e-9)
        rel_se = np.sqrt(t_var / c_mean ** 2 + t_mean ** 2 * c_var / c_mean ** 4)
        assert got.comparison.relative.estimate == pytest.approx(t_mean / c_mean - 1, rel=1e-9)
        assert got.comparison.relative.se == pytest.approx(rel_se, rel=1e-9)
        assert [p.weight for p in got.cohorts] == pytest.approx([n / total for n, *_ in ref], rel=1e-12)
    # mean metrics: the same as the per-cohort pooled estimator checked above
    cohorts = [Cohort(w, {v: (s.n, s.sum, s.sum_sq) for v, s in mean_cohorts[str(k + 1)].items()})
               for k, w in enumerate(RAMP)]
    assert stratified_test(mean_cohorts, "control", "treatment").comparison.absolute.estimate == pytest.approx(
        pooled_effect(cohorts, "control", "treatment").estimate, rel=1e-12)


def test_stratified_test_leaves_out_a_cohort_without_both_variants() -> None:
    one = {"control": MeanStats.from_values([1.0, 0.0, 1.0]), "treatment": MeanStats.from_values([1.0, 1.0, 0.0, 1.0])}
    lonely = {"control": MeanStats.from_values([0.0, 1.0, 0.0, 0.0, 1.0])}
    got = stratified_test({"1": lonely, "2": one}, "control", "treatment")
    assert [(p.cohort, p.units, p.weight) for p in got.cohorts] == [("1", 5, 0.0), ("2", 7, 1.0)]
    plain = welch_test(one["control"], one["treatment"])
    assert got.comparison.absolute.estimate == pytest.approx(plain.absolute.estimate)
    assert got.comparison.absolute.se == pytest.approx(plain.absolute.se)
    nothing = stratified_test({"1": lonely}, "control", "treatment").comparison
    assert nothing.absolute is None and nothing.error is not None and nothing.error.code == "empty_variant"
