"""The latency sketch against exact order statistics (numpy) and its documented guarantee."""

from __future__ import annotations

import math

import numpy as np
import pytest

from abtest.stats import (
    SKETCH_ACCURACY,
    LatencySketch,
    RatioStats,
    bucket_index,
    bucket_value,
    percentile_cont,
)

DISTRIBUTIONS = {
    "lognormal": lambda rng, n: rng.lognormal(5.5, 0.8, n),
    "exponential": lambda rng, n: 50 + rng.exponential(300, n),
    "pareto": lambda rng, n: 20 * (1 + rng.pareto(1.5, n)),
    "rounded_ms": lambda rng, n: np.round(rng.gamma(2.0, 150.0, n)),
    "sub_ms": lambda rng, n: rng.uniform(0.0005, 2.0, n),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_every_rank_is_within_the_relative_accuracy(name: str) -> None:
    rng = np.random.default_rng(len(name))
    x = DISTRIBUTIONS[name](rng, 20_000)
    sketch = LatencySketch.from_values(x)
    assert sketch.count == x.size
    exact = np.sort(x)
    got = sketch.values_at_ranks(range(1, x.size + 1))
    approx = np.array([got[r] for r in range(1, x.size + 1)])
    floor = np.maximum(exact, 0.001)  # values below MIN_VALUE share its bucket
    assert np.all(np.abs(approx - floor) <= SKETCH_ACCURACY * floor * (1 + 1e-9))


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("level", [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0])
def test_quantile_is_within_the_accuracy_of_percentile_cont(name: str, level: float) -> None:
    rng = np.random.default_rng(7)
    x = DISTRIBUTIONS[name](rng, 5_001)
    exact = max(percentile_cont(x, level), 0.001)
    assert LatencySketch.from_values(x).quantile(level) == pytest.approx(exact, rel=SKETCH_ACCURACY * (1 + 1e-9))


def test_buckets_bracket_their_values_and_the_representative_is_central() -> None:
    x = np.geomspace(0.001, 1e6, 100_000)
    i = bucket_index(x)
    gamma = (1 + SKETCH_ACCURACY) / (1 - SKETCH_ACCURACY)
    assert np.all(x <= gamma ** i * (1 + 1e-12)) and np.all(x > gamma ** (i - 1) * (1 - 1e-12))
    rel = np.abs(bucket_value(i) - x) / x
    assert rel.max() <= SKETCH_ACCURACY * (1 + 1e-9)
    assert np.unique(i).size < 20_000  # bounded: about log(1e9) / log(gamma) buckets


def test_merge_is_the_sketch_of_the_union_and_order_free() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(5, 1, 3000), rng.lognormal(6, 0.5, 2000)
    union = LatencySketch.from_values(np.concatenate([a, b]))
    assert LatencySketch.from_values(a) + LatencySketch.from_values(b) == union
    assert LatencySketch.from_values(b) + LatencySketch.from_values(a) == union
    pairs = list(zip(union.indexes, union.counts))
    rng.shuffle(pairs)
    assert LatencySketch.from_counts(pairs) == union
    assert LatencySketch() + union == union


def test_histogram_places_each_bucket_by_its_value() -> None:
    sketch = LatencySketch.from_values([10.0, 10.0, 55.0, 99.0, 150.0, 1000.0])
    assert sketch.histogram(100.0, 4) == [2, 0, 1, 1, 2]
    with pytest.raises(ValueError):
        sketch.histogram(0.0, 4)


def test_empty_and_invalid_sketches() -> None:
    assert math.isnan(LatencySketch().quantile(0.5))
    assert LatencySketch().histogram(10.0, 2) == [0, 0, 0]
    with pytest.raises(ValueError, match="ranks"):
        LatencySketch.from_values([1.0, 2.0]).values_at_ranks([3])
    with pytest.raises(ValueError, match="increasing"):
        LatencySketch((2, 1), (1, 1))
    with pytest.raises(ValueError, match="same length"):
        LatencySketch((1,), ())
    with pytest.raises(ValueError, match=">= 0"):
        LatencySketch((1,), (-1,))


def test_scaled_ratio_stats_keep_the_per_unit_variance() -> None:
    rng = np.random.default_rng(11)
    d = rng.integers(1, 20, 400).astype(float)
    m = rng.binomial(d.astype(int), 0.6).astype(float)
    sample = RatioStats.from_values(m, d)
    scaled = sample.scaled_to(40_000)
    assert scaled.n == 40_000
    assert scaled.mean == pytest.approx(sample.mean, rel=1e-12)
    # variance changes only by the n-1 normalisation: (n_s - 1) n / (n_s (n - 1))
    factor = (400 - 1) * 40_000 / (400 * (40_000 - 1))
    assert scaled.variance == pytest.approx(sample.variance * factor, rel=1e-9)
    with pytest.raises(ValueError):
        RatioStats(0, 0, 0, 0, 0, 0).scaled_to(10)
