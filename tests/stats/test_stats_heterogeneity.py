"""Cochran's Q interaction test against statsmodels' meta-analysis and a simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.meta_analysis import combine_effects

from abtest.stats import heterogeneity_test


@pytest.mark.parametrize("seed", range(30))
def test_q_matches_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 12))
    d, s = rng.normal(0, 1, k), rng.uniform(0.05, 2, k)
    ours = heterogeneity_test(list(zip(d, s)))
    ref = combine_effects(d, s**2)
    assert ours.q == pytest.approx(ref.q, rel=1e-9)
    assert ours.df == k - 1
    assert ours.p_value == pytest.approx(sps.chi2.sf(ref.q, k - 1), rel=1e-9)


def test_undefined_segments_are_left_out() -> None:
    r = heterogeneity_test([(0.1, 0.05), (None, 0.1), (0.3, 0.0), (0.2, 0.1)])
    assert r.segments == 2 and r.df == 1
    assert heterogeneity_test([(0.1, 0.05)]).error is not None


def test_level_under_homogeneous_effects_and_power_under_heterogeneous() -> None:
    rng = np.random.default_rng(3)
    s = np.array([0.05, 0.1, 0.2])
    same = [heterogeneity_test(list(zip(rng.normal(0.1, s), s))).p_value < 0.05 for _ in range(2000)]
    apart = [heterogeneity_test(list(zip(rng.normal([0.0, 0.3, 0.6], s), s))).p_value < 0.05 for _ in range(500)]
    assert abs(np.mean(same) - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 2000)
    assert np.mean(apart) > 0.9
