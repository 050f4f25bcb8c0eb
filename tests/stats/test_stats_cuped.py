"""CUPED: agreement with gbstats 0.8.0's regression adjustment (golden and random cases), the
ratio recipe against per-unit linearised values, imputation of units without history, and the
coverage / variance-reduction simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gbstats.frequentist.tests import FrequentistConfig, TwoSidedTTest
from gbstats.models.statistics import RegressionAdjustedStatistic, SampleMeanStatistic
from stats_cuped_simulation import simulate
from stats_reference import rel_err

from abtest.stats import (
    CupedMeanStats,
    CupedRatioStats,
    MeanStats,
    RatioStats,
    cuped_adjust,
    impute_missing,
    variance_reduction,
    welch_test,
)

RTOL = 1e-6


def _gb(s: CupedMeanStats) -> RegressionAdjustedStatistic:
    return RegressionAdjustedStatistic(
        n=s.n, post_statistic=SampleMeanStatistic(n=s.n, sum=s.sum, sum_squares=s.sum_sq),
        pre_statistic=SampleMeanStatistic(n=s.n, sum=s.pre_sum, sum_squares=s.pre_sum_sq),
        post_pre_sum_of_products=s.cross_sum, theta=0)


def _gbstats(c: CupedMeanStats, t: CupedMeanStats, kind: str) -> dict[str, float]:
    test = TwoSidedTTest(_gb(c), _gb(t), FrequentistConfig(difference_type=kind))
    r = test.compute_result()
    return {"estimate": r.expected, "ci_lower": r.ci[0], "ci_upper": r.ci[1], "p_value": r.p_value,
            "se": r.uplift.stddev, "theta": getattr(test.stat_a, "theta", 0.0)}


def _assert_matches(c: CupedMeanStats, t: CupedMeanStats) -> None:
    ours = welch_test(*cuped_adjust(c, t))
    for kind, effect in (("absolute", ours.absolute), ("relative", ours.relative)):
        ref = _gbstats(c, t, kind)
        for field in ("estimate", "ci_lower", "ci_upper", "se"):
            assert rel_err(getattr(effect, field), ref[field]) <= RTOL, (kind, field, getattr(effect, field), ref)
        # p-values: relative error, or absolute where both are tiny (1 - cdf loses digits there)
        assert abs(effect.p_value - ref["p_value"]) <= RTOL * max(ref["p_value"], 1e-3), (kind, effect, ref)
    ac, _ = cuped_adjust(c, t)
    assert rel_err(ac.theta, _gbstats(c, t, "absolute")["theta"]) <= RTOL


def _pair(rng: np.random.Generator) -> tuple[CupedMeanStats, CupedMeanStats]:
    rho = rng.uniform(-0.95, 0.95)
    out = []
    for shift in (0.0, rng.normal(0, 0.3)):
        n = int(rng.integers(20, 5000))
        x = rng.gamma(rng.uniform(0.5, 4), rng.uniform(0.5, 20), n)
        z = (x - x.mean()) / x.std()
        y = 10 + rng.uniform(0.5, 5) * (rho * z + math.sqrt(1 - rho * rho) * rng.standard_normal(n)) + shift
        out.append(CupedMeanStats.from_values(y, x))
    return out[0], out[1]


GOLDEN = {
    # conversion after / before: binary covariate and outcome
    "binary": (CupedMeanStats.from_values([1, 0, 0, 1, 1, 0, 0, 0, 1, 0] * 30, [1, 0, 0, 1, 0, 0, 1, 0, 1, 0] * 30),
               CupedMeanStats.from_values([1, 1, 0, 1, 1, 0, 0, 1, 1, 0] * 30, [1, 0, 0, 1, 1, 0, 0, 0, 1, 0] * 30)),
    # revenue with a strong pre-period covariate
    "revenue": (CupedMeanStats.from_values(np.arange(200) * 1.5 + np.sin(np.arange(200)) * 20, np.arange(200)),
                CupedMeanStats.from_values(np.arange(220) * 1.5 + 8 + np.cos(np.arange(220)) * 20, np.arange(220))),
    # a negatively correlated covariate, unequal arms
    "negative": (CupedMeanStats.from_values(100 - np.arange(50) % 17, np.arange(50) % 17 + np.arange(50) % 3),
                 CupedMeanStats.from_values(103 - np.arange(80) % 17, np.arange(80) % 17)),
    # sums as SQL gives them
    "sums": (CupedMeanStats(5000, 12500.0, 51000.0, 11000.0, 40000.0, 35000.0),
             CupedMeanStats(5100, 13200.0, 54300.0, 11300.0, 41000.0, 36800.0)),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_cases_agree_with_gbstats(name: str) -> None:
    _assert_matches(*GOLDEN[name])


@pytest.mark.parametrize("seed", range(120))
def test_random_cases_agree_with_gbstats(seed: int) -> None:
    _assert_matches(*_pair(np.random.default_rng(seed)))


def test_no_covariate_variance_means_no_adjustment_as_gbstats() -> None:
    c = CupedMeanStats.from_values([1.0, 2.0, 3.0, 4.0], [2.0] * 4)
    t = CupedMeanStats.from_values([2.0, 3.0, 5.0, 4.0], [2.0] * 4)
    ac, at = cuped_adjust(c, t)
    assert ac.theta == 0.0
    plain, adjusted = welch_test(c.post, t.post), welch_test(ac, at)
    assert adjusted.absolute.estimate == pytest.approx(plain.absolute.estimate, rel=1e-12)
    assert adjusted.absolute.se == pytest.approx(plain.absolute.se, rel=1e-12)
    assert variance_reduction(ac, at) == pytest.approx(0.0, abs=1e-12)


def _linearised(m, d, a, b, r, rx):  # type: ignore[no-untyped-def]
    return (m - r * d) / d.mean(), (a - rx * b) / b.mean()


@pytest.mark.parametrize("seed", range(40))
def test_ratio_matches_per_unit_linearisation(seed: int) -> None:
    """The sufficient-statistic ratio recipe equals the mean recipe run on explicit per-unit
    delta-method values computed with numpy (theta from the pooled linearisation)."""
    rng = np.random.default_rng(1000 + seed)
    raw = []
    for shift in (0.0, rng.normal(0, 2)):
        n = int(rng.integers(50, 3000))
        d, b = rng.poisson(3, n) + 1.0, rng.poisson(3, n) + 1.0
        base = rng.gamma(2, 50, n)
        raw.append((d * (base + rng.normal(0, 30, n) + shift), d, b * (base + rng.normal(0, 30, n)), b))
    c, t = (CupedRatioStats.from_values(*arrays) for arrays in raw)
    ac, at = cuped_adjust(c, t)
    pooled = [np.concatenate([raw[0][i], raw[1][i]]) for i in range(4)]
    pm, pd_, pa, pb = pooled
    l_all, k_all = _linearised(pm, pd_, pa, pb, pm.sum() / pd_.sum(), pa.sum() / pb.sum())
    theta = np.cov(l_all, k_all, ddof=1)[0, 1] / np.var(k_all, ddof=1)
    assert rel_err(ac.theta, theta) <= RTOL
    for (m, d, a, b), adj in zip(raw, (ac, at)):
        r, rx = m.sum() / d.sum(), a.sum() / b.sum()
        l, k = _linearised(m, d, a, b, r, rx)
        assert rel_err(adj.mean, r - theta * rx) <= RTOL
        assert rel_err(adj.variance, np.var(l - theta * k, ddof=1)) <= RTOL
        assert rel_err(adj.unadjusted_variance, RatioStats.from_values(m, d).variance) <= RTOL


def test_ratio_with_unit_denominators_is_the_mean_recipe() -> None:
    rng = np.random.default_rng(5)
    arms = []
    for shift in (0.0, 0.4):
        x = rng.normal(10, 2, 400)
        arms.append((x + rng.normal(shift, 1, 400), x))
    ratio = cuped_adjust(*(CupedRatioStats.from_values(y, np.ones_like(y), x, np.ones_like(x)) for y, x in arms))
    mean = cuped_adjust(*(CupedMeanStats.from_values(y, x) for y, x in arms))
    for r, m in zip(ratio, mean):
        assert rel_err(r.mean, m.mean) <= 1e-9 and rel_err(r.variance, m.variance) <= 1e-9
        assert rel_err(r.theta, m.theta) <= 1e-9


def test_units_without_history_carry_the_pooled_covariate_mean() -> None:
    rng = np.random.default_rng(9)
    y_h, x_h = rng.normal(5, 1, 300), rng.normal(3, 1, 300)
    y_new = rng.normal(5, 1, 100)
    xbar = x_h.mean()
    imputed = impute_missing(CupedMeanStats.from_values(y_h, x_h), MeanStats.from_values(y_new), xbar)
    explicit = CupedMeanStats.from_values(np.concatenate([y_h, y_new]), np.concatenate([x_h, np.full(100, xbar)]))
    for f in ("n", "sum", "sum_sq", "pre_sum", "pre_sum_sq", "cross_sum"):
        assert getattr(imputed, f) == pytest.approx(getattr(explicit, f), rel=1e-12), f
    m, d, b = rng.normal(9, 1, 50), np.ones(50) * 2, np.ones(50)
    ratio = impute_missing(CupedRatioStats.from_values(m * 2, d, m, b), RatioStats.from_values(m, d), (1.5, 0.5))
    expect = CupedRatioStats.from_values(np.concatenate([m * 2, m]), np.concatenate([d, d]),
                                         np.concatenate([m, np.full(50, 1.5)]), np.concatenate([b, np.full(50, 0.5)]))
    for f in ("pre_num_sum", "pre_den_sum_sq", "num_pre_num", "num_pre_den", "den_pre_num", "den_pre_den"):
        assert getattr(ratio, f) == pytest.approx(getattr(expect, f), rel=1e-12), f


def test_mixed_shapes_are_refused() -> None:
    with pytest.raises(ValueError):
        cuped_adjust(CupedMeanStats(3, 1, 1, 1, 1, 1), CupedRatioStats(3, *([1.0] * 14)))


@pytest.mark.parametrize("ratio", [False, True])
@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_simulation_coverage_and_width(rho: float, ratio: bool) -> None:
    """300 replicates of 1000 units per arm: the adjusted CI covers the true effect at the
    nominal 95 % (binomial 3-sigma band) and is sqrt(1 - rho^2) as wide as the plain one."""
    result = simulate(rho, ratio=ratio, seed=int(rho * 100) + ratio)
    band = 3 * math.sqrt(0.95 * 0.05 / result["reps"])
    assert abs(result["coverage_cuped"] - 0.95) <= band, result
    assert abs(result["width_ratio"] / result["expected_width_ratio"] - 1) <= 0.02, result
    assert abs(result["variance_reduction"] - rho * rho) <= 0.03, result
