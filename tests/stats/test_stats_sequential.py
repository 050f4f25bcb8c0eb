"""Confidence sequences: gbstats agreement, consistency, and the A/A peeking proof."""

from __future__ import annotations

import math

import numpy as np
import pytest
from stats_aa_simulation import aa_peeking_rates
from stats_reference import gbstats_ttest, random_mean_pair, random_ratio_pair, rel_err

from abtest.stats import (
    MeanStats,
    always_valid_p_value,
    mixture_rho,
    radius_ratio,
    sequential_radius,
    sequential_test,
    welch_test,
)


def test_peeking_a_a_keeps_sequential_fpr_below_alpha_while_naive_inflates() -> None:
    r = aa_peeking_rates(sims=4000, looks=20, batch=50, alpha=0.05, seed=2026)
    print("A/A peeking rates:", r)
    three_se = 3 * r["monte_carlo_se_at_alpha"]
    assert r["sequential_peeking_fpr"] <= 0.05 + three_se
    assert r["naive_peeking_fpr"] > 0.05 + 10 * three_se  # clearly inflated
    # a single fixed-horizon look is calibrated: the inflation comes from peeking
    assert abs(r["fixed_horizon_single_look_fpr"] - 0.05) <= three_se


def test_sequential_still_detects_a_real_effect() -> None:
    r = aa_peeking_rates(sims=1000, looks=20, batch=50, seed=7, effect=0.2)
    print("power with a 20% lift:", r)
    assert r["sequential_peeking_fpr"] > 0.8


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # gbstats' exp
@pytest.mark.parametrize("n_star", [1000, 5000, 20000])
def test_matches_gbstats_sequential_on_random_inputs(n_star: float) -> None:
    for seed in range(60):
        rng = np.random.default_rng(seed)
        c, t = (random_mean_pair if seed % 2 else random_ratio_pair)(rng)
        seq = sequential_test(welch_test(c, t), n_star=n_star)
        for kind, ours in (("relative", seq.relative), ("absolute", seq.absolute)):
            ref = gbstats_ttest(c, t, kind, sequential=True, n_star=n_star)
            assert ours is not None
            for key in ("ci_lower", "ci_upper", "p_value"):
                assert rel_err(getattr(ours, key), ref[key]) <= 1e-6, (seed, kind, key)


def test_p_value_below_alpha_exactly_when_sequence_excludes_zero() -> None:
    rng = np.random.default_rng(1)
    est, se = rng.normal(0, 1, 5000), rng.uniform(0.1, 1.0, 5000)
    n = rng.integers(10, 100000, 5000)
    p = always_valid_p_value(est, se, n, 0.05)
    excludes = np.abs(est) > sequential_radius(se, n, 0.05)
    assert np.array_equal(p < 0.05, excludes)
    assert 0.0 < (p < 0.05).mean() < 1.0


def test_sequence_is_wider_than_fixed_interval_and_tightest_near_n_star() -> None:
    ratios = {n: radius_ratio(n) for n in (500, 5000, 50000)}
    assert all(r > 1.0 for r in ratios.values())
    assert ratios[5000] < ratios[500] and ratios[5000] < ratios[50000]
    assert radius_ratio(5000) == pytest.approx(1.5486, abs=1e-4)  # value quoted in the docstring


def test_errors_pass_through_and_arguments_are_checked() -> None:
    bad = welch_test(MeanStats(0, 0.0, 0.0), MeanStats(10, 5.0, 4.0))
    seq = sequential_test(bad)
    assert seq.absolute is None and seq.error == bad.error and not seq.significant
    with pytest.raises(ValueError):
        mixture_rho(0.05, n_star=0)
    with pytest.raises(ValueError):
        mixture_rho(1.5)
    assert mixture_rho(0.05, 5000) == pytest.approx(
        math.sqrt((-2 * math.log(0.05) + math.log(-2 * math.log(0.05) + 1)) / 5000))
