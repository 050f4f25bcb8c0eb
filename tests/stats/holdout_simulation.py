"""Layer holdout simulation: the cumulative impact report's estimate and CI, end to end through
the evaluator.

A layer with a holdout share of 0.1 and three experiments on disjoint ranges: ``a`` (40 % of
the layer, 50/50, treatment +0.05 on a conversion rate of 0.2), ``b`` (30 %, coverage 0.5,
targeted at country US, treatment +0.03) and ``c`` (30 %, three variants, -0.02 and +0.04).
Every unit is asked by every experiment of the layer (as a product asks each experiment it
shows): it is *exposed* when one enrols it, in the *holdout* when one answers it ``holdout``.
Its conversion is Bernoulli(0.2 + the effect of the variant it got). Per replicate the report's
comparison (:func:`abtest.stats.welch_test`, exposed minus holdout) is checked against the
true cumulative effect, the mean effect over the exposed units. The A/A run sets every effect
to 0 (false-positive rate at alpha 0.05).

    PYTHONPATH=. .venv/bin/python tests/stats/holdout_simulation.py     # prints JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from abtest.evaluator import ExperimentConfig, VariantConfig, assign  # noqa: E402
from abtest.stats import MeanStats, welch_test  # noqa: E402

SHARE = 0.1
BASE = 0.2


def _layer(effects: dict[str, float]) -> list[ExperimentConfig]:
    def v(key: str, weight: float, control: bool = False) -> VariantConfig:
        return VariantConfig(key, "v1-fp32", weight, is_control=control)

    common = dict(status="running", phase=1, layer="home", holdout=SHARE)
    return [
        ExperimentConfig(id=1, key="a", salt="sa", coverage=1.0, layer_start=0.0, layer_end=0.4,
                         variants=(v("control", 0.5, True), v("a-t", 0.5)), **common),
        ExperimentConfig(id=2, key="b", salt="sb", coverage=0.5, layer_start=0.4, layer_end=0.7,
                         variants=(v("control", 0.5, True), v("b-t", 0.5)),
                         targeting=({"attribute": "country", "op": "eq", "value": "US"},), **common),
        ExperimentConfig(id=3, key="c", salt="sc", coverage=1.0, layer_start=0.7, layer_end=1.0,
                         variants=(v("control", 1 / 3, True), v("c-1", 1 / 3), v("c-2", 1 / 3)), **common),
    ]


def simulate(effects: dict[str, float], n: int = 10_000, reps: int = 200, alpha: float = 0.05,
             seed: int = 5) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    layer = _layer(effects)
    estimates, truths, covered, rejected, held_shares = [], [], 0, 0, []
    for rep in range(reps):
        holdout, exposed, effect_of_exposed = [], [], []
        countries = rng.choice(["US", "DE"], n)
        draws = rng.random(n)
        for i in range(n):
            unit, attrs = f"r{rep}-u{i}", {"country": str(countries[i])}
            answers = [assign(exp, unit, attrs) for exp in layer]
            enrolled = next((x for x in answers if x.in_experiment), None)
            if enrolled is not None:
                effect = effects.get(enrolled.variant, 0.0)
                exposed.append(float(draws[i] < BASE + effect))
                effect_of_exposed.append(effect)
            elif any(x.reason == "holdout" for x in answers):
                holdout.append(float(draws[i] < BASE))
        c = welch_test(MeanStats.from_values(holdout), MeanStats.from_values(exposed), alpha)
        truth = float(np.mean(effect_of_exposed))
        estimates.append(c.absolute.estimate)
        truths.append(truth)
        covered += c.absolute.ci_lower <= truth <= c.absolute.ci_upper
        rejected += c.absolute.p_value < alpha
        held_shares.append(len(holdout) / (len(holdout) + len(exposed)))
    return {"reps": reps, "units": n, "mean_estimate": round(float(np.mean(estimates)), 5),
            "mean_true_effect": round(float(np.mean(truths)), 5),
            "bias": round(float(np.mean(np.array(estimates) - np.array(truths))), 5),
            "ci_coverage": covered / reps, "rejection_rate": rejected / reps,
            "holdout_share_of_enrolled": round(float(np.mean(held_shares)), 4)}


if __name__ == "__main__":
    effects = {"a-t": 0.05, "b-t": 0.03, "c-1": -0.02, "c-2": 0.04}
    print(json.dumps({"effects": simulate(effects), "aa": simulate({}, seed=6)}, indent=2))
