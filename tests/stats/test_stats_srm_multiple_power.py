"""SRM vs scipy.chisquare, Holm/BH vs statsmodels, power vs statsmodels NormalIndPower."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower

from abtest.stats import (
    MSG_ZERO_BASELINE,
    MeanStats,
    achieved_power,
    adjust_p_values,
    power_analysis,
    required_units_per_variant,
    srm_test,
)


@pytest.mark.parametrize("observed, weights", [
    ([5000, 5000], [0.5, 0.5]), ([5000, 5210], [1, 1]), ([10000, 10600], [1, 1]),
    ([3000, 1020, 980], [0.6, 0.2, 0.2]), ([4, 9], [0.5, 0.5]),
])
def test_srm_matches_scipy_chisquare(observed, weights) -> None:
    r = srm_test(observed, weights)
    expected = np.array(weights) / sum(weights) * sum(observed)
    ref = sps.chisquare(observed, expected)
    assert r.chi2 == pytest.approx(ref.statistic, rel=1e-9, abs=1e-12)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert r.flagged == (ref.pvalue < 0.001)


def test_srm_flags_only_below_threshold_and_explains() -> None:
    bad, fine = srm_test([10000, 10600], [1, 1]), srm_test([5000, 5050], [1, 1])
    assert bad.flagged and "sample ratio mismatch" in bad.message
    assert not fine.flagged and fine.p_value > 0.001
    empty = srm_test([0, 0], [1, 1])
    assert not empty.flagged and empty.p_value == 1.0 and "no units" in empty.message
    for args in (([10, 10], [1, 0]), ([10], [1]), ([10, -1], [1, 1]), ([10, 10], [1, 1, 1])):
        with pytest.raises(ValueError):
            srm_test(*args)


@pytest.mark.parametrize("method, sm_method", [("holm", "holm"), ("bh", "fdr_bh")])
def test_adjustments_match_statsmodels(method: str, sm_method: str) -> None:
    rng = np.random.default_rng(0)
    # statsmodels' holm runs gc.collect() on every call (~0.1 s here): few draws
    for size in (1, 2, 5, 12, 40):
        for _ in range(3):
            p = np.concatenate([rng.uniform(0, 1, size), rng.uniform(0, 0.01, size // 3)])
            if rng.random() < 0.3:
                p[: min(2, p.size)] = p[0]  # ties
            ours = adjust_p_values(list(p), method=method, alpha=0.05)
            reject, adj, _, _ = multipletests(p, alpha=0.05, method=sm_method)
            np.testing.assert_allclose(ours.adjusted, adj, rtol=1e-12)
            assert list(ours.rejected) == list(reject)
            assert ours.raw == tuple(p)


def test_adjustment_skips_missing_p_values() -> None:
    r = adjust_p_values([0.01, None, float("nan"), 0.04], method="holm")
    assert r.adjusted[1] is None and r.adjusted[2] is None and r.raw[2] is None
    assert r.adjusted[0] == pytest.approx(0.02) and r.adjusted[3] == pytest.approx(0.04)
    assert r.rejected == (True, False, False, True)
    with pytest.raises(ValueError):
        adjust_p_values([1.2])
    with pytest.raises(ValueError):
        adjust_p_values([0.1], method="bonferroni")  # type: ignore[arg-type]


@pytest.mark.parametrize("d, alpha, power", [(0.1, 0.05, 0.8), (0.02, 0.05, 0.9),
                                             (0.5, 0.01, 0.8), (0.05, 0.1, 0.95)])
def test_sample_size_and_power_match_statsmodels(d: float, alpha: float, power: float) -> None:
    sigma = 3.0
    delta, variance_sum = d * sigma, 2 * sigma**2
    ref_n = NormalIndPower().solve_power(effect_size=d, alpha=alpha, power=power, ratio=1.0)
    ours = required_units_per_variant(delta, variance_sum, alpha, power, exact=True)
    assert ours == pytest.approx(ref_n, rel=1e-6)
    assert required_units_per_variant(delta, variance_sum, alpha, power) == np.ceil(ref_n)
    for n in (10, 500, 12345):
        ref_p = NormalIndPower().power(effect_size=d, nobs1=n, alpha=alpha, ratio=1.0)
        assert achieved_power(delta, variance_sum, n, alpha) == pytest.approx(ref_p, rel=1e-9)


def test_power_matches_simulated_rejection_rate() -> None:
    rng = np.random.default_rng(4)
    n, delta = 400, 0.18
    x_c, x_t = rng.normal(0, 1, (2000, n)), rng.normal(delta, 1, (2000, n))
    p = sps.ttest_ind(x_t, x_c, axis=1, equal_var=False).pvalue
    expected = achieved_power(delta, 2.0, n, 0.05)
    assert abs((p < 0.05).mean() - expected) < 3 * np.sqrt(expected * (1 - expected) / 2000)


def test_power_analysis_plan_and_days_to_go() -> None:
    c, t = MeanStats.proportion(3000, 300), MeanStats.proportion(3000, 320)
    plan = power_analysis(c, t, mde=0.05, relative=True, days_elapsed=3)
    v = c.variance + t.variance
    assert plan.absolute_mde == pytest.approx(0.005)
    assert plan.required_per_variant == required_units_per_variant(0.005, v)
    assert plan.achieved_power == pytest.approx(achieved_power(0.005, v, 3000))
    assert plan.days_to_go == pytest.approx((plan.required_per_variant - 3000) / 1000)
    assert not plan.enough_units
    done = power_analysis(c, t, mde=0.5, relative=True, days_elapsed=3)
    assert done.enough_units and done.days_to_go == 0.0
    zero = power_analysis(MeanStats.proportion(100, 0), MeanStats.proportion(100, 3), mde=0.1)
    assert zero.error == MSG_ZERO_BASELINE and zero.required_per_variant is None
    with pytest.raises(ValueError):
        power_analysis(c, t, mde=-0.1)
    with pytest.raises(ValueError):
        power_analysis(c, t, mde=0.1, power=1.0)
