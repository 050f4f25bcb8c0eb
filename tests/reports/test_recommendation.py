"""Recommendation rules end to end, SRM flagging, and reports that have nothing to say yet."""

from __future__ import annotations

import numpy as np
import pytest

from abtest.stats import SKETCH_ACCURACY

from .factories import T0, simple

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
    action, reasons = _rec(report_of())
    assert action == "ship", reasons
    assert reasons[0].startswith("primary metric win: conversion difference +")


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
    assert len(p_values) == 16  # 8 metrics x 2 treatments, all in one Holm family
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
