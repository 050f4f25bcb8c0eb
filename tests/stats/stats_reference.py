"""Independent references for abtest.stats: scipy, statsmodels and gbstats 0.8.

Shared by the golden-number tests, the randomized tests and
``tests/stats/agreement_report.py`` (which prints the measured agreement).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig
from gbstats.frequentist.tests import (
    FrequentistConfig,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
)
from gbstats.models.statistics import RatioStatistic, SampleMeanStatistic
from scipy import stats as sps
from statsmodels.stats.weightstats import _tconfint_generic

from abtest.stats import MeanStats, RatioStats

# Golden cases: (control, treatment). Ratio sums were drawn once from a
# clustered simulation (seed 20261129) and frozen here.
CASES: dict[str, tuple[Any, Any]] = {
    "conversion_10k": (MeanStats.proportion(10000, 1000), MeanStats.proportion(10000, 1100)),
    "conversion_small": (MeanStats.proportion(40, 6), MeanStats.proportion(45, 13)),
    "revenue_mean": (MeanStats(5000, 52340.5, 700000.0), MeanStats(5100, 54000.0, 720000.0)),
    "count_small_n": (MeanStats(12, 30.5, 95.25), MeanStats(15, 45.0, 160.0)),
    "latency_ratio": (
        RatioStats(2000, 1396032.9, 1440775928.2, 10119.0, 58993.0, 8151470.6),
        RatioStats(2050, 1359140.3, 1355900730.9, 10322.0, 60394.0, 7984677.3),
    ),
    "error_rate_ratio": (
        RatioStats(3000, 460.0, 528.0, 23948.0, 211528.0, 4146.0),
        RatioStats(2950, 628.0, 746.0, 23617.0, 208175.0, 5548.0),
    ),
}


def to_gbstats(s: MeanStats | RatioStats) -> Any:
    """The gbstats statistic with the same (n - 1) definitions."""
    if isinstance(s, MeanStats):
        return SampleMeanStatistic(n=s.n, sum=s.sum, sum_squares=s.sum_sq)
    return RatioStatistic(
        n=s.n,
        m_statistic=SampleMeanStatistic(n=s.n, sum=s.num_sum, sum_squares=s.num_sum_sq),
        d_statistic=SampleMeanStatistic(n=s.n, sum=s.den_sum, sum_squares=s.den_sum_sq),
        m_d_sum_of_products=s.cross_sum,
    )


def scipy_welch(c: MeanStats, t: MeanStats, alpha: float = 0.05) -> dict[str, float]:
    """scipy's Welch test (statistic, p) and statsmodels' unequal-variance CI."""
    sd_c, sd_t = math.sqrt(c.variance), math.sqrt(t.variance)
    res = sps.ttest_ind_from_stats(t.mean, sd_t, t.n, c.mean, sd_c, c.n, equal_var=False)
    v_c, v_t = c.variance / c.n, t.variance / t.n
    df = (v_c + v_t) ** 2 / (v_c**2 / (c.n - 1) + v_t**2 / (t.n - 1))
    lo, hi = _tconfint_generic(t.mean - c.mean, math.sqrt(v_c + v_t), df, alpha, "two-sided")
    return {"estimate": t.mean - c.mean, "ci_lower": lo, "ci_upper": hi,
            "p_value": float(res.pvalue), "t": float(res.statistic), "df": df}


def gbstats_ttest(c: Any, t: Any, difference_type: str, alpha: float = 0.05,
                  sequential: bool = False, n_star: float = 5000) -> dict[str, float]:
    """gbstats' (sequential) two-sided t-test for a relative or absolute effect."""
    if sequential:
        cfg = SequentialConfig(alpha=alpha, difference_type=difference_type,
                               sequential_tuning_parameter=n_star)
        test = SequentialTwoSidedTTest(to_gbstats(c), to_gbstats(t), cfg)
    else:
        cfg = FrequentistConfig(alpha=alpha, difference_type=difference_type)
        test = TwoSidedTTest(to_gbstats(c), to_gbstats(t), cfg)
    r = test.compute_result()
    return {"estimate": r.expected, "ci_lower": r.ci[0], "ci_upper": r.ci[1],
            "p_value": r.p_value, "se": r.uplift.stddev, "error": r.error_message}


def gbstats_bayes(c: Any, t: Any, difference_type: str, inverse: bool) -> dict[str, float]:
    """gbstats' Gaussian effect test with its default flat prior."""
    cfg = EffectBayesianConfig(difference_type=difference_type, inverse=inverse)
    r = EffectBayesianABTest(to_gbstats(c), to_gbstats(t), cfg).compute_result()
    return {"chance_to_win": r.chance_to_win, "loss_control": r.risk[0],
            "loss_treatment": r.risk[1], "ci_lower": r.ci[0], "ci_upper": r.ci[1]}


def rel_err(ours: float, ref: float) -> float:
    """|ours - ref| / |ref| (absolute error when ref is 0)."""
    return abs(ours - ref) / abs(ref) if ref != 0 else abs(ours)


def random_mean_pair(rng: np.random.Generator) -> tuple[MeanStats, MeanStats]:
    """Random mean-metric sufficient statistics with moderate effects."""
    n_c, n_t = (int(x) for x in rng.integers(20, 50000, 2))
    mu = rng.uniform(0.5, 100.0)
    sd_c, sd_t = mu * rng.uniform(0.1, 3.0, 2)
    m_c = mu
    m_t = mu * (1 + rng.normal(0, 2.0) * sd_c / mu / math.sqrt(min(n_c, n_t)))
    return (MeanStats(n_c, m_c * n_c, (sd_c**2 * (n_c - 1) + n_c * m_c**2)),
            MeanStats(n_t, m_t * n_t, (sd_t**2 * (n_t - 1) + n_t * m_t**2)))


def random_ratio_pair(rng: np.random.Generator) -> tuple[RatioStats, RatioStats]:
    """Random ratio-metric sums from small simulated clustered data."""
    out = []
    for _ in range(2):
        n = int(rng.integers(30, 400))
        d = 1.0 + rng.poisson(rng.uniform(0.5, 8.0), n)
        m = d * rng.uniform(50, 200) * rng.lognormal(0, rng.uniform(0.1, 0.8), n)
        out.append(RatioStats.from_values(m, d))
    return out[0], out[1]
