"""Regenerate GOLDEN in test_stats_golden.py from the references (run by hand).

    .venv/bin/python tests/stats/make_golden.py

Prints a Python literal: for every case in stats_reference.CASES, the values
computed by scipy/statsmodels (``scipy_abs``, mean metrics only) and by
gbstats 0.8 (``gb_abs``, ``gb_rel``, sequential ``gb_seq_abs``/``gb_seq_rel``
with N* = 5000, Bayesian ``gb_bayes_rel``/``gb_bayes_abs``; lower-is-better
(``inverse``) for the latency and error-rate cases).
"""

from __future__ import annotations

import pprint
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from stats_reference import CASES, gbstats_bayes, gbstats_ttest, scipy_welch  # noqa: E402

from abtest.stats import MeanStats  # noqa: E402

KEYS = ("estimate", "ci_lower", "ci_upper", "p_value")
BAYES_KEYS = ("chance_to_win", "loss_control", "loss_treatment")


def golden() -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, (c, t) in CASES.items():
        inverse = "ratio" in name
        row: dict[str, dict[str, float]] = {}
        if isinstance(c, MeanStats):
            s = scipy_welch(c, t)
            row["scipy_abs"] = {k: s[k] for k in KEYS + ("df",)}
        for label, kind, seq in (("gb_abs", "absolute", False), ("gb_rel", "relative", False),
                                 ("gb_seq_abs", "absolute", True), ("gb_seq_rel", "relative", True)):
            g = gbstats_ttest(c, t, kind, sequential=seq)
            row[label] = {k: float(g[k]) for k in KEYS}
        for label, kind in (("gb_bayes_rel", "relative"), ("gb_bayes_abs", "absolute")):
            b = gbstats_bayes(c, t, kind, inverse)
            row[label] = {k: float(b[k]) for k in BAYES_KEYS}
        out[name] = row
    return out


if __name__ == "__main__":
    pprint.pprint(golden(), width=100, sort_dicts=False)
