"""CUPED simulation: coverage of the adjusted CI and its width against the plain one.

Each unit has a pre-period value ``x`` and an outcome ``y = x * rho + e * sqrt(1 - rho^2)``
(standard normal ``x``, ``e``; correlation ``rho``), the treatment adds ``effect``; units are
split evenly. Per replicate: the plain Welch CI and the regression-adjusted one (pooled theta)
of the absolute difference. Mean metrics, and ratio metrics with 1 + Poisson(4) requests per unit in each period.

    .venv/bin/python tests/stats/stats_cuped_simulation.py     # prints JSON
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from abtest.stats import CupedMeanStats, CupedRatioStats, cuped_adjust, welch_test  # noqa: E402


def _arm(rng: np.random.Generator, n: int, rho: float, shift: float, ratio: bool) -> object:
    x = rng.standard_normal(n)
    y = rho * x + math.sqrt(1.0 - rho * rho) * rng.standard_normal(n) + shift
    if not ratio:
        return CupedMeanStats.from_values(y, x)
    d = rng.poisson(4, n) + 1.0
    # a unit sends as many requests before as after (so the linearised ratios correlate with
    # rho too); per-unit totals whose per-request means are y and x, shifted to stay positive
    return CupedRatioStats.from_values((y + 5.0) * d, d, (x + 5.0) * d, d)


def simulate(rho: float, n: int = 1000, reps: int = 300, effect: float = 0.1, alpha: float = 0.05,
             ratio: bool = False, seed: int = 17) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    covered_plain = covered_adj = 0
    widths = []
    reductions = []
    for _ in range(reps):
        c, t = _arm(rng, n, rho, 0.0, ratio), _arm(rng, n, rho, effect, ratio)
        plain = welch_test(c.post, t.post, alpha).absolute
        ac, at = cuped_adjust(c, t)
        adj = welch_test(ac, at, alpha).absolute
        covered_plain += plain.ci_lower <= effect <= plain.ci_upper
        covered_adj += adj.ci_lower <= effect <= adj.ci_upper
        widths.append((adj.ci_upper - adj.ci_lower) / (plain.ci_upper - plain.ci_lower))
        reductions.append(1.0 - (adj.se / plain.se) ** 2)
    return {"rho": rho, "shape": "ratio" if ratio else "mean", "n_per_arm": n, "reps": reps,
            "coverage_plain": covered_plain / reps, "coverage_cuped": covered_adj / reps,
            "width_ratio": float(np.mean(widths)), "expected_width_ratio": math.sqrt(1.0 - rho * rho),
            "variance_reduction": float(np.mean(reductions))}


def main() -> None:
    out = [simulate(rho, ratio=ratio) for ratio in (False, True) for rho in (0.3, 0.6, 0.9)]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
