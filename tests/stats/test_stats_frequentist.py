"""Welch test and relative lift: randomized agreement with scipy/statsmodels/gbstats,
sufficient-statistic definitions, ratio metrics and explained failures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gbstats.models.statistics import ProportionStatistic
from scipy import stats as sps
from stats_reference import (
    gbstats_ttest,
    random_mean_pair,
    random_ratio_pair,
    rel_err,
    scipy_welch,
    to_gbstats,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from abtest.stats import (
    MSG_EMPTY_VARIANT,
    MSG_TOO_FEW_UNITS,
    MSG_ZERO_BASELINE,
    MSG_ZERO_DENOMINATOR,
    MSG_ZERO_VARIANCE,
    MeanStats,
    RatioStats,
    variant_estimate,
    welch_test,
)

RTOL = 1e-6
SEEDS = range(150)


def _assert_close(ours: float, ref: float, what: str) -> None:
    assert rel_err(ours, ref) <= RTOL, (what, ours, ref)


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_absolute_matches_scipy_on_random_inputs(alpha: float) -> None:
    for seed in SEEDS:
        c, t = random_mean_pair(np.random.default_rng(seed))
        ours, ref = welch_test(c, t, alpha).absolute, scipy_welch(c, t, alpha)
        assert ours is not None
        for key in ("estimate", "ci_lower", "ci_upper", "p_value", "df"):
            _assert_close(getattr(ours, key), ref[key], f"seed {seed} {key}")
        _assert_close(ours.estimate / ours.se, ref["t"], f"seed {seed} t")


@pytest.mark.parametrize("pairs", [random_mean_pair, random_ratio_pair])
def test_relative_and_absolute_match_gbstats_on_random_inputs(pairs) -> None:
    for seed in SEEDS:
        c, t = pairs(np.random.default_rng(1000 + seed))
        cmp = welch_test(c, t)
        for kind, ours in (("relative", cmp.relative), ("absolute", cmp.absolute)):
            ref = gbstats_ttest(c, t, kind)
            assert ours is not None and ref["error"] is None
            for key in ("estimate", "ci_lower", "ci_upper", "se"):
                _assert_close(getattr(ours, key), ref[key], f"{seed} {kind} {key}")
            # gbstats computes 2 * (1 - cdf), which loses digits below ~1e-9
            if ref["p_value"] > 1e-9:
                _assert_close(ours.p_value, ref["p_value"], f"{seed} {kind} p")
            else:
                assert ours.p_value < 1e-8


def test_absolute_matches_statsmodels_on_raw_data() -> None:
    rng = np.random.default_rng(7)
    x_c, x_t = rng.exponential(10.0, 800), rng.exponential(10.8, 650)
    lo, hi = CompareMeans(DescrStatsW(x_t), DescrStatsW(x_c)).tconfint_diff(usevar="unequal")
    _, p = sps.ttest_ind(x_t, x_c, equal_var=False)
    ours = welch_test(MeanStats.from_values(x_c), MeanStats.from_values(x_t)).absolute
    assert ours is not None
    for a, b in ((ours.ci_lower, lo), (ours.ci_upper, hi), (ours.p_value, p)):
        _assert_close(a, b, "raw data")


def test_ratio_variance_matches_gbstats_and_proportion_definition_is_documented() -> None:
    c, _ = random_ratio_pair(np.random.default_rng(3))
    _assert_close(c.variance, float(to_gbstats(c).variance), "ratio variance")
    p = MeanStats.proportion(10000, 1234)
    gb = ProportionStatistic(n=10000, sum=1234)
    # ours uses n - 1, gbstats' ProportionStatistic p(1 - p): factor n / (n - 1)
    _assert_close(p.variance, float(gb.variance) * 10000 / 9999, "proportion variance")


def test_ratio_metric_keeps_heavy_users_from_faking_significance() -> None:
    """A/A with clustered requests: a request-level t-test over-rejects,
    the unit-level ratio (delta method) keeps the nominal rate."""
    rng = np.random.default_rng(11)
    sims, naive, ratio = 400, 0, 0
    for _ in range(sims):
        arms = []
        for _arm in range(2):
            reqs = 1 + rng.geometric(0.05, 150)  # heavy users with ~20+ requests
            unit_mean = rng.lognormal(np.log(100.0), 0.6, 150)
            lat = np.repeat(unit_mean, reqs) * rng.lognormal(0, 0.2, reqs.sum())
            unit = np.repeat(np.arange(150), reqs)
            arms.append((lat, np.bincount(unit, lat), reqs.astype(float)))
        (l_c, m_c, d_c), (l_t, m_t, d_t) = arms
        naive += sps.ttest_ind(l_t, l_c, equal_var=False).pvalue < 0.05
        cmp = welch_test(RatioStats.from_values(m_c, d_c), RatioStats.from_values(m_t, d_t))
        ratio += cmp.significant
    se = math.sqrt(0.05 * 0.95 / sims)
    assert ratio / sims <= 0.05 + 3 * se
    assert naive / sims > 0.3


def test_expected_failures_are_results_not_exceptions() -> None:
    ok = MeanStats(100, 50.0, 40.0)
    assert welch_test(MeanStats(0, 0.0, 0.0), ok).error == MSG_EMPTY_VARIANT
    assert welch_test(MeanStats(1, 2.0, 4.0), ok).error == MSG_TOO_FEW_UNITS
    zero = welch_test(MeanStats(10, 20.0, 40.0), MeanStats(10, 30.0, 90.0))
    assert zero.error == MSG_ZERO_VARIANCE and zero.absolute is None
    baseline = welch_test(MeanStats.proportion(500, 0), MeanStats.proportion(500, 7))
    assert baseline.relative is None and baseline.relative_error == MSG_ZERO_BASELINE
    assert baseline.absolute is not None and baseline.absolute.estimate == pytest.approx(0.014)
    no_requests = RatioStats(5, 0.0, 0.0, 0.0, 0.0, 0.0)
    r = welch_test(no_requests, RatioStats.from_values([1.0, 2.0, 3.0], [1.0, 1.0, 2.0]))
    assert r.error == MSG_ZERO_DENOMINATOR and r.control_mean is None
    assert variant_estimate(MeanStats(0, 0.0, 0.0)).error == MSG_EMPTY_VARIANT


def test_one_constant_arm_still_tests_against_the_other() -> None:
    cmp = welch_test(MeanStats(10, 20.0, 40.0), MeanStats.from_values(np.arange(10.0)))
    assert cmp.error is None and cmp.absolute is not None
    assert cmp.absolute.df == pytest.approx(9.0)


@pytest.mark.parametrize("kwargs", [dict(n=-1, sum=0.0, sum_sq=0.0), dict(n=1.5, sum=0.0, sum_sq=0.0),
                                    dict(n=3, sum=math.nan, sum_sq=1.0), dict(n=3, sum=1.0, sum_sq=-1.0)])
def test_invalid_statistics_raise(kwargs) -> None:
    with pytest.raises(ValueError):
        MeanStats(**kwargs)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        RatioStats(3, 1.0, 1.0, -1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        MeanStats.proportion(10, 11)
    for alpha in (0.0, 1.0, -0.1, 2.0):
        with pytest.raises(ValueError):
            welch_test(MeanStats(10, 5.0, 4.0), MeanStats(10, 6.0, 5.0), alpha=alpha)


def test_variant_estimate_is_the_t_interval_and_pooling_adds_units() -> None:
    x = np.random.default_rng(5).normal(3.0, 2.0, 60)
    est = variant_estimate(MeanStats.from_values(x), alpha=0.1)
    lo, hi = sps.t.interval(0.9, 59, loc=x.mean(), scale=sps.sem(x))
    _assert_close(est.ci_lower, lo, "lower")
    _assert_close(est.ci_upper, hi, "upper")
    pooled = MeanStats.from_values(x[:20]) + MeanStats.from_values(x[20:])
    _assert_close(pooled.variance, float(np.var(x, ddof=1)), "pooled variance")
