"""Recommendation rules end to end, SRM flagging, and reports that have nothing to say yet."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from abtest.reports.catalogue import BUILTINS
from abtest.stats import SKETCH_ACCURACY

from .factories import T0, Factory, simple

N = {"control": 1000, "treatment": 1000}
CONV = {"control": 0.10, "treatment": 0.22}
ERR = {"control": 0.01, "treatment": 0.01}
LAT = {"control": 300.0, "treatment": 300.0}


def _rec(report):  # type: ignore[no-untyped-def]
    return report["recommendation"]["action"], report["recommendation"]["reasons"]


def test_clear_win_with_healthy_guardrails_ships(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    simple(f, np.random.default_rng(1), N, CONV, ERR, LAT)
    f.flush()
    report = report_of()
    action, reasons = _rec(report)
    assert action == "ship", reasons
    assert reasons[0].startswith("primary metric win: conversion +"), reasons  # in percentage points
    assert reasons[0].endswith(" points)") and "95 % always-valid interval" in reasons[0]
    rec = report["recommendations"][0]
    assert rec["basis"]["decision"] == "superiority" and rec["basis"]["scale"] == "absolute"
    assert rec["basis"]["lower"] > 0 and rec["basis"]["margin"] is None
    assert not any("units per variant" in r for r in reasons)  # decided: no power line


def test_guardrail_breach_rolls_back(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    simple(f, np.random.default_rng(2), N, CONV, {"control": 0.01, "treatment": 0.15}, LAT)
    f.flush()
    report = report_of()
    action, reasons = _rec(report)
    assert action == "roll back"
    assert any(r.startswith("guardrail breached: error_rate") for r in reasons)
    statuses = {g["metric"]: g["status"] for g in report["recommendations"][0]["guardrails"]}
    assert statuses["error_rate"] == "breached"


def test_primary_loss_rolls_back(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    simple(f, np.random.default_rng(3), N, {"control": 0.22, "treatment": 0.10}, ERR, LAT)
    f.flush()
    assert _rec(report_of())[0] == "roll back"


def test_sample_ratio_mismatch_blocks_ship(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    simple(f, np.random.default_rng(4), {"control": 1000, "treatment": 820}, CONV, ERR, LAT)
    f.flush()
    report = report_of()
    assert report["srm"]["flagged"] is True and report["srm"]["p_value"] < 0.001
    action, reasons = _rec(report)
    assert action == "keep running"
    assert reasons[0].startswith("sample ratio mismatch")
    assert report["recommendations"][0]["primary_status"] == "win"


def test_undecided_experiment_keeps_running_with_a_power_plan(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    simple(f, np.random.default_rng(5), {"control": 200, "treatment": 200}, {"control": 0.1, "treatment": 0.1},
           ERR, LAT)
    f.flush()
    report = report_of()
    assert _rec(report)[0] == "keep running"
    power = report["recommendations"][0]["power"]
    assert power["current_units_per_variant"] == 200
    assert power["required_units_per_variant"] > 200 and 0 < power["achieved_power"] < 0.8


@pytest.mark.parametrize("units", [0, 1])
def test_empty_and_single_unit_variants_are_explained(factory, report_of, units) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    for v in ("control", "treatment"):
        for i in range(units):
            f.exposure(f"{v}{i}", v, T0)
            f.request(f"{v}{i}", v, 100.0, at=T0)
    f.flush()
    report = report_of()
    assert report["recommendation"]["action"] == "keep running"
    for m in report["metrics"]:
        comp = m["comparisons"][0]
        assert comp["error"], m["name"]
        assert comp["p_value"] is None and comp["adjusted_p_value"] is None and comp["significant"] is False
    assert report["srm"]["flagged"] is False


def test_zero_variance_latency_is_explained(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    for v in ("control", "treatment"):
        for i in range(30):
            f.exposure(f"{v}{i}", v, T0)
            f.request(f"{v}{i}", v, 250.0, at=T0)
    f.flush()
    report = report_of()
    by_name = {m["name"]: m for m in report["metrics"]}
    assert by_name["latency_ms"]["comparisons"][0]["error"] == "both variants have zero variance; no test is possible"
    assert by_name["error_rate"]["variants"]["control"]["estimate"] == 0.0
    assert by_name["latency_p50_ms"]["variants"]["control"]["estimate"] == pytest.approx(250.0, rel=SKETCH_ACCURACY)
    assert by_name["latency_p50_ms"]["comparisons"][0]["error"]


def test_two_treatments_each_get_a_comparison(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    variants = [{"key": "control", "engine": "v1-fp32", "weight": 0.34, "control": True},
                {"key": "treatment", "engine": "v2-int4", "weight": 0.33},
                {"key": "treatment-b", "engine": "v2-int4", "weight": 0.33}]
    f = factory("exp-1", variants=variants)
    simple(f, np.random.default_rng(6), {"control": 100, "treatment": 100, "treatment-b": 100},
           {v: 0.1 for v in ("control", "treatment", "treatment-b")},
           {v: 0.02 for v in ("control", "treatment", "treatment-b")},
           {"control": 300, "treatment": 250, "treatment-b": 350})
    f.flush()
    report = report_of()
    assert [c["variant"] for c in report["metrics"][0]["comparisons"]] == ["treatment", "treatment-b"]
    p_values = [c["p_value"] for m in report["metrics"] for c in m["comparisons"]]
    assert len(p_values) == 2 * len(report["metrics"]) == 2 * (len(BUILTINS) + 3)  # all in one Holm family
    assert report["options"]["multiple_testing"]["family"] == sum(p is not None for p in p_values) >= 12
    assert [r["variant"] for r in report["recommendations"]] == ["treatment", "treatment-b"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_dark_launch_without_a_served_treatment(factory, report_of, client, admin) -> None:  # type: ignore[no-untyped-def]
    variants = [{"key": "control", "engine": "v1-fp32", "weight": 1.0, "control": True},
                {"key": "treatment", "engine": "v2-int4", "weight": 0.0, "shadow": True}]
    f = factory("exp-1", variants=variants)
    for i in range(10):
        f.exposure(f"u{i}", "control", T0)
        f.request(f"u{i}", "control", 300.0 + i, at=T0)
        f.request(f"u{i}", "treatment", 200.0, at=T0, shadow=True, output_match=i < 9)
    f.flush()
    report = report_of()
    assert report["recommendation"] == {"action": "keep running", "variant": None, "reasons": ["no treatment variant"]}
    assert report["srm"]["flagged"] is False and report["metrics"][0]["comparisons"] == []
    assert report["shadow"][0]["requests"] == 10 and report["shadow"][0]["output_matches"] == 9
    assert client.get("/v1/experiments/exp-1/report?format=html", headers=admin).status_code == 200
    assert client.get("/v1/experiments/exp-1/report?format=csv", headers=admin).status_code == 200


def test_constant_equal_arms_make_a_guardrail_hold() -> None:
    """0 errors against 0 errors: no test is possible, but nothing got worse."""
    from abtest import stats as S
    from abtest.stats.decision import constant_difference

    zero = S.MeanStats(n=50, sum=0.0, sum_sq=0.0)
    analysis = S.analyze(S.welch_test(zero, zero), False, 5000)
    assert analysis.comparison.error == S.MSG_ZERO_VARIANCE
    assert S.failure_code(analysis.comparison.error) == "zero_variance"

    evidence = constant_difference("error_rate", False, analysis, None)
    assert evidence is not None and S.guardrail_status(evidence) == "ok"
    worse = S.analyze(S.welch_test(zero, S.MeanStats(n=50, sum=50.0, sum_sq=50.0)), False, 5000)
    evidence = constant_difference("error_rate", False, worse, None)
    assert evidence is not None and S.guardrail_status(evidence) == "breached"


NI_METRICS = [{"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary", "margin": 0.05},
              {"name": "error_rate", "role": "guardrail"},
              {"name": "latency_p99_ms", "role": "guardrail", "margin": 0.1, "test": "equivalence"}]


def _equal_conversion(f: Factory, per_arm: int) -> None:
    """Exactly half of each arm converts, one request per unit with latencies of the same
    distribution in both arms and no errors: no difference in conversion, at a large sample."""
    rng = np.random.default_rng(per_arm)
    for variant in ("control", "treatment"):
        for i in range(per_arm):
            unit = f"{variant}-{i}"
            f.exposure(unit, variant, T0)
            f.request(unit, variant, float(rng.normal(300.0, 30.0)), at=T0)
            if i % 2 == 0:
                f.event(unit, "purchase", T0 + timedelta(hours=1))
    f.flush()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_equal_conversion_ships_under_non_inferiority_and_keeps_the_control_under_superiority(
        factory, client, admin) -> None:  # type: ignore[no-untyped-def]
    """10,000 units per arm, 50 % conversion in both: non-inferior at a 5 % margin (ship), yet no
    detectable effect for a superiority test at its planned sample (keep control)."""
    _equal_conversion(factory("ni", metrics=NI_METRICS, decision="non_inferiority"), 10_000)
    sup_metrics = [{k: v for k, v in m.items() if k != "margin"} if m["role"] == "primary" else m
                   for m in NI_METRICS]
    _equal_conversion(factory("sup", metrics=sup_metrics), 10_000)

    ni = client.get("/v1/experiments/ni/report", headers=admin).get_json()
    rec = ni["recommendations"][0]
    assert ni["recommendation"]["action"] == "ship", ni["recommendation"]["reasons"]
    assert rec["primary_status"] == "non_inferior"
    first = ni["recommendation"]["reasons"][0]
    assert first.startswith("treatment is non-inferior on conversion: margin 5 %, 95 % always-valid interval -")
    basis = rec["basis"]
    assert basis["decision"] == "non_inferiority" and basis["scale"] == "relative" and basis["margin"] == 0.05
    assert -0.05 < basis["lower"] < 0 < basis["upper"] and basis["estimate"] == pytest.approx(0.0, abs=1e-12)
    seq = next(m for m in ni["metrics"] if m["name"] == "conversion")["comparisons"][0]["sequential"]["relative"]
    assert (basis["lower"], basis["upper"]) == (seq["ci_lower"], seq["ci_upper"])
    assert {g["metric"]: g["status"] for g in rec["guardrails"]} == {"error_rate": "ok", "latency_p99_ms": "ok"}
    assert rec["power"]["kind"] == "non_inferiority" and rec["power"]["mde_relative"] == 0.05
    assert not any("units per variant" in r for r in ni["recommendation"]["reasons"])

    sup = client.get("/v1/experiments/sup/report", headers=admin).get_json()
    assert sup["recommendation"]["action"] == "keep control", sup["recommendation"]["reasons"]
    assert sup["recommendation"]["reasons"][0] == ("no detectable effect on conversion at the planned sample: "
                                                   "keep the control")
    assert sup["recommendations"][0]["primary_status"] == "flat"
    assert sup["recommendations"][0]["basis"]["scale"] == "absolute"
    assert sup["recommendations"][0]["power"]["kind"] == "superiority"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_non_inferiority_short_of_its_sample_keeps_running_with_the_units_needed(
        factory, report_of) -> None:  # type: ignore[no-untyped-def]
    _equal_conversion(factory("exp-1", metrics=NI_METRICS, decision="non_inferiority"), 1000)
    report = report_of()
    rec = report["recommendations"][0]
    assert rec["action"] == "keep running" and rec["primary_status"] == "inconclusive"
    assert rec["reasons"][0].startswith("treatment is not yet shown non-inferior on conversion: margin 5 %")
    plan = rec["power"]
    assert plan["kind"] == "non_inferiority" and plan["current_units_per_variant"] == 1000
    assert plan["required_units_per_variant"] > plan["fixed_horizon_units_per_variant"] > 1000
    more = plan["required_units_per_variant"] - 1000
    assert rec["reasons"][-1].startswith(f"about {more:,} more units per variant needed to show "
                                         "non-inferiority at the 5 % margin")
    assert "at the current rate" in rec["reasons"][-1]
