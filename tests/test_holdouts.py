"""Layer holdouts in the pure evaluator and the definitions document: the share is honoured,
the holdout hash is independent of every other hash, and a holdout change is a change of
definitions."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from scipy.stats import binomtest, chi2_contingency

from abtest.client import definitions as defs
from abtest.evaluator import ExperimentConfig, VariantConfig, assign, bucket, in_holdout

VARIANTS = (VariantConfig("control", "v1-fp32", 0.5, is_control=True), VariantConfig("treatment", "v2-int4", 0.5))


def config(**overrides) -> ExperimentConfig:  # type: ignore[no-untyped-def]
    values = dict(id=1, key="exp", status="running", salt="s4lt", phase=1, coverage=1.0, variants=VARIANTS,
                  layer="home", layer_start=0.0, layer_end=1.0, holdout=0.1)
    values.update(overrides)
    return ExperimentConfig(**values)


def unit_ids(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"u{rng.getrandbits(64):x}" for _ in range(n)]


@pytest.mark.parametrize("share", [0.01, 0.05, 0.2, 0.5])
def test_the_holdout_share_is_honoured_on_100k_units(share: float) -> None:
    units = unit_ids(100_000, seed=3)
    answers = [assign(config(holdout=share), u) for u in units]
    held = sum(a.reason == "holdout" for a in answers)
    # a two-sided exact binomial test of the holdout's size against the share
    assert binomtest(held, len(units), share).pvalue > 0.001
    for a in answers:
        if a.reason == "holdout":
            assert (a.variant, a.engine, a.in_experiment) == ("control", "v1-fp32", False)
            assert in_holdout(a)
        else:
            assert a.in_experiment and not in_holdout(a)


def test_the_holdout_is_the_documented_hash_of_the_layer_name_only() -> None:
    units = unit_ids(20_000, seed=4)
    a = config(holdout=0.3)
    b = config(key="other", salt="another-salt", phase=3, layer_start=0.0, layer_end=1.0, holdout=0.3, id=2)
    for u in units:
        expected = bucket("holdout:home", u) < 0.3
        assert (assign(a, u).reason == "holdout") == expected
        assert (assign(b, u).reason == "holdout") == expected  # same units across the layer's experiments
    # another layer holds out other units
    c = config(layer="search", holdout=0.3)
    same = sum((assign(a, u).reason == "holdout") == (assign(c, u).reason == "holdout") for u in units)
    assert 0.55 < same / len(units) < 0.61  # independent: P(agree) = 0.3^2 + 0.7^2 = 0.58


def test_the_holdout_is_independent_of_layer_position_coverage_and_variant() -> None:
    units = unit_ids(100_000, seed=5)
    exp = config(coverage=0.6, layer_start=0.25, layer_end=0.75, holdout=0.2)
    held = [bucket("holdout:home", u) < 0.2 for u in units]
    for namespace, cut in (("layer:home", 0.5), ("s4lt:coverage", 0.6), ("s4lt:1:variant", 0.5)):
        other = [bucket(namespace, u) < cut for u in units]
        table = [[sum(h and o for h, o in zip(held, other)), sum(h and not o for h, o in zip(held, other))],
                 [sum(o and not h for h, o in zip(held, other)), sum(not h and not o for h, o in zip(held, other))]]
        assert chi2_contingency(table).pvalue > 0.001, namespace
    # the holdout only claims units the experiment would enrol: outside the range or the
    # coverage the reason stays "layer"/"coverage", and among would-be enrolled units the
    # holdout is its share (and the variants keep their 50/50 split outside it)
    reasons = Counter(assign(exp, u).reason for u in units)
    would_enrol = reasons["holdout"] + reasons["assigned"]
    assert binomtest(reasons["holdout"], would_enrol, 0.2).pvalue > 0.001
    assert binomtest(reasons["layer"], len(units), 0.5).pvalue > 0.001
    served = Counter(assign(exp, u).variant for u in units if assign(exp, u).reason == "assigned")
    assert binomtest(served["treatment"], reasons["assigned"], 0.5).pvalue > 0.001


def test_precedence_forced_targeting_and_sticky() -> None:
    units = [u for u in unit_ids(5000, seed=6) if bucket("holdout:home", u) < 0.5][:50]
    exp = config(holdout=0.5, forced={units[0]: "treatment"}, sticky=True,
                 targeting=({"attribute": "country", "op": "eq", "value": "US"},))
    assert assign(exp, units[0], {"country": "US"}).reason == "forced"  # QA allow-list first
    assert assign(exp, units[1], {"country": "FR"}).reason == "targeting"  # not eligible at all
    # a sticky unit that is in the holdout is held out: the holdout wins over a stored variant
    kept = assign(exp, units[1], {"country": "US"}, sticky="treatment")
    assert (kept.reason, kept.variant, kept.in_experiment) == ("holdout", "control", False)
    # no holdout without a layer, whatever the share says
    assert assign(config(layer=None, holdout=0.5), units[1]).reason == "assigned"
    assert assign(config(status="paused"), units[1]).reason == "not_running"


def _doc(*configs: ExperimentConfig) -> dict:
    return defs.document(configs)


def test_a_holdout_change_is_a_change_of_definitions_and_round_trips() -> None:
    base = _doc(config(holdout=0.0), config(key="b", id=2, layer=None, holdout=0.0))
    assert base["layers"] == {}
    held = _doc(config(holdout=0.05), config(key="b", id=2, layer=None, holdout=0.0))
    other = _doc(config(holdout=0.1), config(key="b", id=2, layer=None, holdout=0.0))
    assert len({base["version"], held["version"], other["version"]}) == 3
    assert held["layers"] == {"home": {"holdout": 0.05}}
    assert held["experiments"] == base["experiments"]  # the share lives once, in the layer
    version, configs = defs.parse(held)
    assert version == held["version"]
    assert configs["exp"].holdout == 0.05 and configs["b"].holdout == 0.0
    assert defs.document(configs.values()) == held
    with pytest.raises(ValueError):  # two experiments of one layer cannot disagree
        _doc(config(holdout=0.05), config(key="c", id=3, holdout=0.1))


@pytest.mark.parametrize("layers, field", [
    ([], "definitions.layers"),
    ({"home": 0.1}, "layers['home']"),
    ({"home": {}}, "layers['home'].holdout"),
    ({"home": {"holdout": 0.6}}, "layers['home'].holdout"),
    ({"home": {"holdout": -0.1}}, "layers['home'].holdout"),
    ({"home": {"holdout": True}}, "layers['home'].holdout"),
])
def test_a_bad_layers_entry_refuses_the_document(layers, field) -> None:  # type: ignore[no-untyped-def]
    doc = _doc(config(holdout=0.05))
    doc["layers"] = layers
    with pytest.raises(defs.DefinitionsError) as caught:
        defs.parse(doc)
    assert caught.value.field == field


def test_a_document_without_layers_still_parses() -> None:
    doc = _doc(config(holdout=0.0))
    del doc["layers"]
    _, configs = defs.parse(doc)
    assert configs["exp"].holdout == 0.0
