"""Assignment: determinism, fairness, coverage ramps, layers, targeting, forced units."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest
from scipy.stats import chisquare

from abtest.evaluator import ExperimentConfig, VariantConfig, assign, bucket, matches_targeting


def config(**overrides) -> ExperimentConfig:  # type: ignore[no-untyped-def]
    values = dict(
        id=1, key="exp", status="running", salt="s4lt", phase=1, coverage=1.0,
        variants=(VariantConfig("control", "v1-fp32", 0.5, is_control=True),
                  VariantConfig("treatment", "v2-int4", 0.5)),
    )
    values.update(overrides)
    return ExperimentConfig(**values)


def unit_ids(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"u{rng.getrandbits(64):x}" for _ in range(n)]


def test_bucket_is_the_documented_sha256_position() -> None:
    # Pinned values: any change to the hash breaks every running experiment's assignments.
    assert bucket("s4lt:coverage", "user-1") == pytest.approx(0.5407646755608937, abs=0)
    assert bucket("s4lt:1:variant", "user-1") == pytest.approx(0.04460419814019982, abs=0)
    digest = hashlib.sha256(b"ns\x1fabc").digest()
    assert bucket("ns", "abc") == int.from_bytes(digest[:8], "big") / 2**64


def test_same_unit_same_variant_in_a_fresh_process() -> None:
    import subprocess
    import sys

    code = ("from abtest.evaluator import bucket; "
            "print(repr(bucket('s4lt:1:variant','user-1')), repr(bucket('x','y')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.split()
    assert float(out[0]) == bucket("s4lt:1:variant", "user-1")
    assert float(out[1]) == bucket("x", "y")


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.2, 0.8), (0.1, 0.3, 0.6)])
def test_split_over_100k_units_respects_weights(weights: tuple[float, ...]) -> None:
    variants = tuple(VariantConfig(f"v{i}", "v1-fp32", w, is_control=i == 0) for i, w in enumerate(weights))
    exp = config(variants=variants)
    units = unit_ids(100_000)
    counts = Counter(assign(exp, u).variant for u in units)
    observed = [counts[v.key] for v in variants]
    for v, count in zip(variants, observed):
        assert abs(count / len(units) - v.weight) < 0.01
    assert chisquare(observed, [len(units) * w for w in weights]).pvalue > 0.001


def test_assignment_is_deterministic_and_salt_dependent() -> None:
    units = unit_ids(2000, seed=1)
    a = [assign(config(), u).variant for u in units]
    assert a == [assign(config(), u).variant for u in units]
    b = [assign(config(salt="other"), u).variant for u in units]
    assert 0.4 < sum(x != y for x, y in zip(a, b)) / len(units) < 0.6  # independent re-randomization


def test_ramping_coverage_never_moves_an_enrolled_unit() -> None:
    units = unit_ids(20_000, seed=2)
    before = {u: assign(config(coverage=0.2), u) for u in units}
    after = {u: assign(config(coverage=0.7), u) for u in units}
    enrolled = [u for u in units if before[u].in_experiment]
    assert 0.18 < len(enrolled) / len(units) < 0.22
    assert all(after[u].in_experiment and after[u].variant == before[u].variant for u in enrolled)
    assert 0.68 < sum(a.in_experiment for a in after.values()) / len(units) < 0.72


def test_units_outside_coverage_get_the_control_engine_unenrolled() -> None:
    result = [assign(config(coverage=0.0), u) for u in unit_ids(100)]
    assert {(r.variant, r.engine, r.in_experiment, r.reason) for r in result} == {
        ("control", "v1-fp32", False, "coverage")}


def test_experiments_in_one_layer_never_share_a_unit() -> None:
    a = config(key="a", salt="a", layer="home", layer_start=0.0, layer_end=0.5)
    b = config(key="b", salt="b", layer="home", layer_start=0.5, layer_end=1.0)
    units = unit_ids(10_000, seed=3)
    in_a = {u for u in units if assign(a, u).in_experiment}
    in_b = {u for u in units if assign(b, u).in_experiment}
    assert not in_a & in_b
    assert len(in_a | in_b) == len(units)
    assert 0.47 < len(in_a) / len(units) < 0.53


def test_forced_units_get_their_variant_but_are_not_analysed() -> None:
    exp = config(forced={"qa-1": "treatment"})
    r = assign(exp, "qa-1")
    assert (r.variant, r.engine, r.in_experiment, r.reason) == ("treatment", "v2-int4", False, "forced")


@pytest.mark.parametrize("status", ["draft", "paused", "stopped"])
def test_not_running_serves_control_without_enrolling(status: str) -> None:
    r = assign(config(status=status), "user-1")
    assert (r.variant, r.engine, r.in_experiment, r.reason) == ("control", "v1-fp32", False, "not_running")


def test_shadow_variant_is_served_by_control_with_a_copy_to_the_shadow_engine() -> None:
    exp = config(variants=(VariantConfig("control", "v1-fp32", 0.5, is_control=True),
                           VariantConfig("dark", "v2-int4", 0.5, shadow=True)))
    results = [assign(exp, u) for u in unit_ids(200)]
    dark = [r for r in results if r.variant == "dark"]
    assert dark and all(r.engine == "v1-fp32" and r.shadow_engine == "v2-int4" for r in dark)
    assert all(r.shadow_engine is None for r in results if r.variant == "control")


def test_paused_treatment_sends_its_units_to_control() -> None:
    results = [assign(config(treatment_paused=True), u) for u in unit_ids(200)]
    assert {r.engine for r in results} == {"v1-fp32"}
    assert any(r.reason == "treatment_paused" and not r.in_experiment for r in results)


@pytest.mark.parametrize(("rule", "attrs", "expected"), [
    ({"attribute": "country", "op": "eq", "value": "US"}, {"country": "US"}, True),
    ({"attribute": "country", "op": "eq", "value": "US"}, {"country": "FR"}, False),
    ({"attribute": "country", "op": "in", "value": ["US", "CA"]}, {"country": "CA"}, True),
    ({"attribute": "country", "op": "not_in", "value": ["US"]}, {"country": "US"}, False),
    ({"attribute": "country", "op": "not_in", "value": ["US"]}, {}, True),
    ({"attribute": "country", "op": "neq", "value": "US"}, {"country": "DE"}, True),
    ({"attribute": "age", "op": "gte", "value": 18}, {"age": 18}, True),
    ({"attribute": "age", "op": "lt", "value": 18}, {"age": "17"}, True),
    ({"attribute": "age", "op": "gt", "value": 18}, {"age": "old"}, False),
    ({"attribute": "age", "op": "gt", "value": 18}, {}, False),
    ({"attribute": "app", "op": "semver_gte", "value": "1.10.0"}, {"app": "1.9.9"}, False),
    ({"attribute": "app", "op": "semver_gte", "value": "1.10.0"}, {"app": "1.10"}, True),
    ({"attribute": "app", "op": "semver_lt", "value": "2.0.0"}, {"app": "v1.99.3"}, True),
    ({"attribute": "app", "op": "semver_eq", "value": "2"}, {"app": "2.0.0"}, True),
])
def test_targeting_operators(rule: dict, attrs: dict, expected: bool) -> None:
    assert matches_targeting([rule], attrs) is expected


def test_units_failing_targeting_get_control() -> None:
    exp = config(targeting=({"attribute": "country", "op": "eq", "value": "US"},))
    assert assign(exp, "u", {"country": "FR"}).reason == "targeting"
    assert assign(exp, "u", {"country": "US"}).in_experiment
