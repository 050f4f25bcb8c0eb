"""A/A simulation: peeking after every batch, naive fixed-horizon vs sequential.

Both arms draw from the same skewed distribution (exponential, mean 1). After
each batch the analyst looks and declares a winner the first time p < alpha.
The naive rule uses Welch's fixed-horizon p-value; the sequential rule uses
``abtest.stats.always_valid_p_value``. Vectorised over simulations.

    .venv/bin/python tests/stats/stats_aa_simulation.py     # prints JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from abtest.stats import always_valid_p_value  # noqa: E402
from abtest.stats.frequentist import welch_df  # noqa: E402


def aa_peeking_rates(sims: int = 4000, looks: int = 20, batch: int = 50, alpha: float = 0.05,
                     n_star: float = 5000, seed: int = 2026,
                     effect: float = 0.0) -> dict[str, float]:
    """Rejection rates when stopping at the first of ``looks`` with p < alpha.

    With ``effect == 0`` (A/A) these are false-positive rates; with a relative
    ``effect`` > 0 on the treatment's mean they are powers.
    """
    scale = np.array([1.0, 1.0 + effect])[:, None, None]
    rng = np.random.default_rng(seed)
    s = np.zeros((2, sims))
    ss = np.zeros((2, sims))
    naive_hit = np.zeros(sims, dtype=bool)
    seq_hit = np.zeros(sims, dtype=bool)
    naive_last = np.zeros(sims, dtype=bool)
    for look in range(1, looks + 1):
        x = rng.exponential(1.0, (2, sims, batch)) * scale
        s += x.sum(axis=2)
        ss += (x * x).sum(axis=2)
        n = look * batch
        mean = s / n
        var = (ss - s * s / n) / (n - 1)
        diff = mean[1] - mean[0]
        se = np.sqrt(var[1] / n + var[0] / n)
        df = welch_df(var[1], n, var[0], n)
        p_naive = 2.0 * sps.t.sf(np.abs(diff) / se, df)
        p_seq = always_valid_p_value(diff, se, 2 * n, alpha, n_star)
        naive_hit |= p_naive < alpha
        seq_hit |= p_seq < alpha
        naive_last = p_naive < alpha
    return {
        "sims": sims, "looks": looks, "units_per_arm_per_look": batch, "alpha": alpha,
        "n_star": n_star, "seed": seed, "effect": effect,
        "fixed_horizon_single_look_fpr": float(naive_last.mean()),
        "naive_peeking_fpr": float(naive_hit.mean()),
        "sequential_peeking_fpr": float(seq_hit.mean()),
        "monte_carlo_se_at_alpha": float(np.sqrt(alpha * (1 - alpha) / sims)),
    }


if __name__ == "__main__":
    print(json.dumps(aa_peeking_rates(), indent=2))
