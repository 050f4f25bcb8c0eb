"""Cluster-aware quantile CIs: coverage by simulation, cluster bootstrap,
gbstats' cluster variance, the SQL recipe helpers and explained failures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gbstats.models.statistics import QuantileClusteredStatistic
from scipy import optimize
from scipy import stats as sps

from abtest.stats import (
    MSG_EMPTY_VARIANT,
    MSG_TOO_FEW_FOR_QUANTILE,
    MSG_TOO_FEW_UNITS,
    RatioStats,
    compare_quantiles,
    percentile_cont,
    percentile_cont_ranks,
    quantile_estimate,
    quantile_from_values,
    quantile_ranks,
)

# Clustered latency model: unit effect u ~ N(0, TAU^2); heavy users (more
# requests, 1 + Poisson(LAM e^{A u})) are also slower; request noise SIGMA.
MU, TAU, SIGMA, LAM, A, UNITS = math.log(200.0), 0.5, 0.3, 4.0, 1.0, 1500
LEVELS = (0.5, 0.95, 0.99)


def simulate(rng: np.random.Generator, units: int = UNITS) -> tuple[np.ndarray, np.ndarray]:
    u = rng.normal(0.0, TAU, units)
    reqs = 1 + rng.poisson(LAM * np.exp(A * u))
    unit = np.repeat(np.arange(units), reqs)
    lat = np.exp(MU + u[unit] + SIGMA * rng.normal(size=unit.size))
    return lat, unit


def true_quantile(q: float) -> float:
    """Request-weighted population quantile of the model (Gauss-Hermite in u)."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    u, w = TAU * z, w / w.sum()
    weight = 1.0 + LAM * np.exp(A * u)

    def cdf(x: float) -> float:
        return float(np.sum(w * weight * sps.norm.cdf((math.log(x) - MU - u) / SIGMA))
                     / np.sum(w * weight))

    return optimize.brentq(lambda x: cdf(x) - q, 1.0, 1e5, xtol=1e-10)


def test_cluster_ci_covers_at_nominal_rate_and_iid_ci_does_not() -> None:
    """Coverage of the true quantile (per variant) and of a zero difference (A/A).

    The outer CI is slightly conservative in the far tail (its normal-equivalent
    se overstates a skewed sampling distribution), so the upper bound allows
    over-coverage; under-coverage beyond simulation error fails.
    """
    rng = np.random.default_rng(42)
    truth = {q: true_quantile(q) for q in LEVELS}
    reps = 200
    hits = {q: 0 for q in LEVELS}
    iid_hits = {q: 0 for q in LEVELS}
    diff_hits = {q: 0 for q in LEVELS}
    for _ in range(reps):
        (x_c, u_c), (x_t, u_t) = simulate(rng), simulate(rng)
        for q in LEVELS:
            c = quantile_from_values(x_c, u_c, q)
            t = quantile_from_values(x_t, u_t, q)
            naive = quantile_from_values(x_c, np.arange(x_c.size), q)  # one unit per request
            if c.error is None:
                hits[q] += c.ci_lower <= truth[q] <= c.ci_upper
            iid_hits[q] += naive.ci_lower <= truth[q] <= naive.ci_upper
            a = compare_quantiles(c, t).absolute
            diff_hits[q] += a is not None and a.ci_lower <= 0.0 <= a.ci_upper
    se = math.sqrt(0.95 * 0.05 / reps)
    rates = {q: (hits[q] / reps, iid_hits[q] / reps, diff_hits[q] / reps) for q in LEVELS}
    print("coverage (cluster, iid, difference) per level:", rates)
    for q in LEVELS:
        cluster, iid, diff = rates[q]
        assert 0.95 - 3.5 * se <= cluster <= 0.995, (q, cluster)
        assert 0.95 - 3.5 * se <= diff <= 0.999, (q, diff)
        assert iid < 0.95 - 4 * se, (q, iid)  # clustering matters: iid CI too narrow


def test_unit_step_on_a_one_in_32_sample_keeps_coverage_and_width() -> None:
    """Large reports compute step 2 on a 1-in-32 sample of units, scaled to all units
    (``RatioStats.scaled_to``): the CI keeps its coverage and, on average, the exact width."""
    rng = np.random.default_rng(8)
    units, reps = 12_800, 150
    truth = {q: true_quantile(q) for q in (0.5, 0.95)}
    hits = {q: 0 for q in truth}
    width_ratio = {q: [] for q in truth}
    for _ in range(reps):
        x, unit = simulate(rng, units)
        sampled = rng.random(units) < 1 / 32
        xs = np.sort(x)
        for q in truth:
            x_hat = percentile_cont(x, q)
            exact = RatioStats.from_values(np.bincount(unit, weights=(x <= x_hat).astype(float)),
                                           np.bincount(unit).astype(float))
            keep = sampled[unit]
            _, inv = np.unique(unit[keep], return_inverse=True)
            sample = RatioStats.from_values(np.bincount(inv, weights=(x[keep] <= x_hat).astype(float)),
                                            np.bincount(inv).astype(float)).scaled_to(units)
            r_exact, r_sample = quantile_ranks(q, x.size, exact), quantile_ranks(q, x.size, sample)
            hits[q] += xs[r_sample.rank_lower - 1] <= truth[q] <= xs[r_sample.rank_upper - 1]
            width_ratio[q].append((xs[r_sample.rank_upper - 1] - xs[r_sample.rank_lower - 1])
                                  / (xs[r_exact.rank_upper - 1] - xs[r_exact.rank_lower - 1]))
    for q in truth:
        assert hits[q] / reps >= 0.89, (q, hits[q] / reps)
        assert 0.93 <= float(np.mean(width_ratio[q])) <= 1.07, (q, np.mean(width_ratio[q]))


def _weighted_quantiles(x_sorted: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Inverse-CDF quantile of x for each row of request weights."""
    cum = np.cumsum(weights, axis=1)
    target = q * cum[:, -1:]
    idx = np.array([np.searchsorted(row, t[0]) for row, t in zip(cum, target)])
    return x_sorted[np.minimum(idx, x_sorted.size - 1)]


def test_standard_error_agrees_with_cluster_bootstrap() -> None:
    """Our se against the sd of a cluster (unit-resampling) bootstrap."""
    rng = np.random.default_rng(3)
    x, unit = simulate(rng)
    order = np.argsort(x)
    x, unit = x[order], unit[order]
    counts = rng.multinomial(UNITS, np.full(UNITS, 1.0 / UNITS), size=300)  # units drawn
    weights = counts[:, unit].astype(float)
    ratios = {}
    for q in LEVELS:
        boot_sd = float(np.std(_weighted_quantiles(x, weights, q), ddof=1))
        ratios[q] = quantile_from_values(x, unit, q).se / boot_sd
    print("se / cluster-bootstrap sd:", ratios)
    assert all(0.8 < r < 1.3 for r in ratios.values()), ratios


def test_cluster_variance_matches_gbstats() -> None:
    x, unit = simulate(np.random.default_rng(9))
    x_hat = percentile_cont(x, 0.95)
    s = np.bincount(unit, weights=(x <= x_hat).astype(float))
    d = np.bincount(unit).astype(float)
    ind = RatioStats.from_values(s, d)
    ranks = quantile_ranks(0.95, x.size, ind)
    gb = QuantileClusteredStatistic(
        n=x.size, n_star=x.size, nu=0.95, quantile_hat=x_hat, quantile_lower=0.0,
        quantile_upper=1.0, main_sum=ind.num_sum, main_sum_squares=ind.num_sum_sq,
        denominator_sum=ind.den_sum, denominator_sum_squares=ind.den_sum_sq,
        main_denominator_sum_product=ind.cross_sum, n_clusters=ind.n)
    ref = math.sqrt(gb.get_cluster_variance)
    assert abs(ranks.sigma_p - ref) / ref < 1e-6


def test_ranks_follow_the_documented_formula() -> None:
    ind = RatioStats.from_values([3.0, 5.0, 9.0, 9.0], [4.0, 6.0, 10.0, 10.0])
    r = quantile_ranks(0.9, 30, ind, alpha=0.05)
    z = sps.norm.ppf(0.975)
    assert r.sigma_p == pytest.approx(math.sqrt(ind.variance / 4))
    assert r.rank_lower == math.floor(30 * (0.9 - z * r.sigma_p))
    assert r.valid == (r.rank_upper == math.ceil(30 * (0.9 + z * r.sigma_p)) <= 30)


def test_percentile_cont_matches_numpy_linear_interpolation() -> None:
    x = np.random.default_rng(0).exponential(size=101)
    for q in (0.0, 0.5, 0.95, 0.99, 1.0):
        assert percentile_cont(x, q) == pytest.approx(float(np.quantile(x, q)), rel=1e-12)
    assert percentile_cont_ranks(5, 0.5) == (3, 4, 0.0)


def test_failures_are_explained() -> None:
    rng = np.random.default_rng(1)
    assert quantile_from_values([], [], 0.5).error == MSG_EMPTY_VARIANT
    one = quantile_from_values(rng.exponential(size=50), np.zeros(50), 0.5)
    assert one.error == MSG_TOO_FEW_UNITS and one.ci_lower is None
    few = quantile_from_values(rng.exponential(size=20), np.arange(20), 0.99)
    assert few.error == MSG_TOO_FEW_FOR_QUANTILE and few.estimate is not None
    cmp = compare_quantiles(few, few)
    assert cmp.absolute is None and cmp.error == MSG_TOO_FEW_FOR_QUANTILE
    with pytest.raises(ValueError):
        quantile_ranks(1.0, 10, RatioStats.from_values([1.0, 0.0], [1.0, 1.0]))
    with pytest.raises(ValueError):
        quantile_estimate(0.5, 1.0, 2.0, 1.0, RatioStats.from_values(
            [5.0, 5.0, 4.0, 6.0], [10.0, 10.0, 10.0, 10.0]))
