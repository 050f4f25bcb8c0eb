"""Measured evidence for the report: agreement with the references and A/A rates.

    .venv/bin/python tests/stats/agreement_report.py      # prints JSON

Max relative error of abtest.stats against (a) the frozen golden numbers and
(b) live scipy/statsmodels/gbstats on randomized inputs (same generators and
seeds as the tests; gbstats p-values, chances and losses below 1e-9 are
skipped because gbstats computes 1 - cdf and truncated-normal means that lose
digits there; the tests assert ours is also < 1e-8), plus the A/A peeking rates.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from stats_aa_simulation import aa_peeking_rates  # noqa: E402
from stats_reference import (  # noqa: E402
    CASES,
    gbstats_bayes,
    gbstats_ttest,
    random_mean_pair,
    random_ratio_pair,
    rel_err,
    scipy_welch,
)
from test_stats_golden import GOLDEN  # noqa: E402

from abtest.stats import bayesian_test, sequential_test, welch_test  # noqa: E402

KEYS = ("estimate", "ci_lower", "ci_upper", "p_value")
BAYES = ("chance_to_win", "loss_control", "loss_treatment")


def _update(acc: dict[str, float], group: str, ours: object, ref: dict, keys) -> None:
    for k in keys:
        r = ref[k]
        if group.startswith("gb") and abs(r) <= 1e-9 and k != "estimate":
            continue  # gbstats computes 1 - cdf / truncnorm means: digits lost there
        acc[group] = max(acc[group], rel_err(getattr(ours, k), r))


def golden_errors() -> dict[str, float]:
    acc: dict[str, float] = defaultdict(float)
    for name, (c, t) in CASES.items():
        cmp = welch_test(c, t)
        seq = sequential_test(cmp)
        hib = "ratio" not in name
        pairs = [("scipy_abs", cmp.absolute), ("gb_abs", cmp.absolute), ("gb_rel", cmp.relative),
                 ("gb_seq_abs", seq.absolute), ("gb_seq_rel", seq.relative)]
        for label, ours in pairs:
            if label in GOLDEN[name]:
                _update(acc, label, ours, GOLDEN[name][label], GOLDEN[name][label])
        for label, scale in (("gb_bayes_rel", "relative"), ("gb_bayes_abs", "absolute")):
            b = bayesian_test(cmp, scale=scale, higher_is_better=hib)
            _update(acc, label, b, GOLDEN[name][label], BAYES)
    return dict(acc)


def random_errors(seeds: int = 150) -> dict[str, float]:
    acc: dict[str, float] = defaultdict(float)
    for seed in range(seeds):
        c, t = random_mean_pair(np.random.default_rng(seed))
        _update(acc, "scipy_statsmodels_absolute_means", welch_test(c, t).absolute,
                scipy_welch(c, t), KEYS)
        for gen in (random_mean_pair, random_ratio_pair):
            c, t = gen(np.random.default_rng(1000 + seed))
            cmp, seq = welch_test(c, t), sequential_test(welch_test(c, t))
            kind = "ratio" if gen is random_ratio_pair else "mean"
            for diff in ("relative", "absolute"):
                _update(acc, f"gbstats_{diff}_{kind}", getattr(cmp, diff), gbstats_ttest(c, t, diff), KEYS)
                _update(acc, f"gbstats_sequential_{diff}_{kind}", getattr(seq, diff),
                        gbstats_ttest(c, t, diff, sequential=True), KEYS)
                for inverse in (False, True):
                    b = bayesian_test(cmp, scale=diff, higher_is_better=not inverse)
                    _update(acc, f"gbstats_bayes_{diff}_{kind}", b,
                            gbstats_bayes(c, t, diff, inverse), BAYES)
    return dict(acc)


if __name__ == "__main__":
    warnings.simplefilter("ignore", RuntimeWarning)
    out = {
        "golden_cases": sorted(CASES),
        "golden_max_rel_error": golden_errors(),
        "random_seeds": 150,
        "random_max_rel_error": random_errors(),
        "aa_peeking": aa_peeking_rates(),
    }
    print(json.dumps(out, indent=2))
