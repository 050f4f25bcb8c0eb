"""Large reports: the unit step of the quantile CIs from the 1-in-32 unit sample, checked
against the same recipe applied to the raw rows of the sampled units."""

from __future__ import annotations

import numpy as np
import pytest

from abtest.reports.rollups import in_sample
from abtest.stats import SKETCH_ACCURACY, RatioStats, quantile_ranks

LEVELS = {"latency_p50_ms": 0.5, "latency_p95_ms": 0.95}


def _metric(report, name):  # type: ignore[no-untyped-def]
    return next(m for m in report["metrics"] if m["name"] == name)


def test_sampled_unit_step_is_the_recipe_on_the_sampled_units(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    rng = np.random.default_rng(21)
    for i in range(6400):
        unit, variant, offset = f"u{i}", "treatment" if i % 2 else "control", rng.normal(0, 40)
        for _ in range(int(rng.integers(1, 6))):
            f.request(unit, variant, max(1.0, 300 + offset + rng.exponential(60)))
    f.flush()
    exact = report_of()
    sampled = report_of(exact_quantile_rows=0, min_sample_units=50)
    assert exact["options"]["quantiles"]["unit_step"] == "exact"
    method = sampled["options"]["quantiles"]
    assert method["unit_step"] == "sample"
    for v in ("control", "treatment"):
        rows = [r for r in f.log.requests if r["variant"] == v]
        x = np.array([r["latency_ms"] for r in rows])
        u = np.array([r["unit_id"] for r in rows])
        keep = np.array([in_sample(unit) for unit in u])
        assert method["sampled_units"][v] == len(set(u[keep])) >= 50
        for name, level in LEVELS.items():
            got = _metric(sampled, name)["variants"][v]
            assert got["estimate"] == _metric(exact, name)["variants"][v]["estimate"]
            _, inv = np.unique(u[keep], return_inverse=True)
            indicator = RatioStats.from_values(np.bincount(inv, weights=(x[keep] <= got["estimate"]).astype(float)),
                                               np.bincount(inv).astype(float)).scaled_to(len(set(u)))
            ranks = quantile_ranks(level, x.size, indicator)
            xs = np.sort(x)
            expected = (xs[ranks.rank_lower - 1], xs[ranks.rank_upper - 1])
            assert (got["ci_lower"], got["ci_upper"]) == pytest.approx(expected, rel=SKETCH_ACCURACY)


def test_too_small_a_sample_falls_back_to_the_exact_unit_step(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    for i in range(200):
        f.request(f"u{i}", "treatment" if i % 2 else "control", 100.0 + i)
    f.flush()
    report = report_of(exact_quantile_rows=0)  # default min_sample_units: 1000
    assert report["options"]["quantiles"]["unit_step"] == "exact"
