"""Sticky ramp simulation: bias and coverage of the report's per-cohort estimator under a trend.

Two allocation cohorts of ``n`` units each (a ramp: 10 % treatment in the first, 50 % in the
second; sticky units keep their variant). The metric drifts between the cohorts (a trend over
time) and the treatment has the same effect in both. Per replicate, the comparison the report
makes for a sticky phase holding both cohorts (:func:`abtest.reports.cohorts.stratified_comparison`,
per cohort, pooled by cohort size) and the naive Welch test of all units pooled, for

* ``binary``: conversion 0.20 in cohort 1, 0.40 in cohort 2, +0.05 for the treatment;
* ``ratio``: latency per ok request (1 + Poisson(2) requests per unit, per-request sd 30 ms),
  100 ms in cohort 1, 140 ms in cohort 2, -10 ms for the treatment.

The target is the effect on the cohort-size-weighted population: absolute ``effect``, relative
``effect / sum_k w_k base_k``.

    PYTHONPATH=. .venv/bin/python tests/stats/stats_sticky_simulation.py [--reps 500]   # prints JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from abtest.reports.cohorts import stratified_comparison  # noqa: E402
from abtest.stats import MeanStats, RatioStats, welch_test  # noqa: E402

SHAPES = {"binary": ((0.20, 0.40), 0.05), "ratio": ((100.0, 140.0), -10.0)}
RAMP = (0.1, 0.5)


def _cohort(rng: np.random.Generator, shape: str, n: int, base: float, effect: float,
            share: float) -> dict[str, MeanStats | RatioStats]:
    treated = rng.random(n) < share
    if shape == "binary":
        y = (rng.random(n) < base + effect * treated).astype(float)
        return {"control": MeanStats.from_values(y[~treated]), "treatment": MeanStats.from_values(y[treated])}
    d = 1.0 + rng.poisson(2, n)
    m = d * (base + effect * treated) + rng.normal(0.0, 30.0, n) * np.sqrt(d)  # a sum of d requests
    return {"control": RatioStats.from_values(m[~treated], d[~treated]),
            "treatment": RatioStats.from_values(m[treated], d[treated])}


def simulate(shape: str, reps: int = 500, n: int = 2000, alpha: float = 0.05, seed: int = 29) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    bases, effect = SHAPES[shape]
    relative = effect / float(np.mean(bases))  # equal cohort sizes: w_k = 1/2
    est, rel, naive, se = [], [], [], []
    covered = covered_rel = covered_naive = 0
    for _ in range(reps):
        cohorts = {k + 1: _cohort(rng, shape, n, b, effect, s) for k, (b, s) in enumerate(zip(bases, RAMP))}
        c = stratified_comparison(cohorts, "control", "treatment", alpha)
        assert c.absolute is not None and c.relative is not None
        est.append(c.absolute.estimate)
        se.append(c.absolute.se)
        rel.append(c.relative.estimate)
        covered += c.absolute.ci_lower <= effect <= c.absolute.ci_upper
        covered_rel += c.relative.ci_lower <= relative <= c.relative.ci_upper
        pooled = welch_test(cohorts[1]["control"] + cohorts[2]["control"],
                            cohorts[1]["treatment"] + cohorts[2]["treatment"], alpha)
        assert pooled.absolute is not None
        naive.append(pooled.absolute.estimate)
        covered_naive += pooled.absolute.ci_lower <= effect <= pooled.absolute.ci_upper
    e, r, nv = np.array(est), np.array(rel), np.array(naive)
    return {"shape": shape, "reps": reps, "units_per_cohort": n, "true_effect": effect,
            "bias": round(float(e.mean() - effect), 5), "bias_mc_se": round(float(e.std(ddof=1) / np.sqrt(reps)), 5),
            "coverage": round(covered / reps, 3), "se_over_sd": round(float(np.mean(se) / e.std(ddof=1)), 3),
            "relative_true": round(relative, 5), "relative_bias": round(float(r.mean() - relative), 5),
            "relative_coverage": round(covered_rel / reps, 3),
            "naive_bias": round(float(nv.mean() - effect), 5), "naive_coverage": round(covered_naive / reps, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=500)
    ns = parser.parse_args()
    print(json.dumps([simulate(shape, ns.reps) for shape in SHAPES], indent=2))


if __name__ == "__main__":
    main()
