"""Decision policies (superiority / non-inferiority), equivalence guardrails, the headline order
and the verdict's plain words."""

from __future__ import annotations

import pytest

import abtest.stats as S
from abtest.stats import MetricEvidence, PowerResult, guardrail_status, headline, primary_status, recommend, srm_test


def rel(name: str, lo: float, hi: float, margin: float | None = None, higher: bool = True,
        test: str | None = None) -> MetricEvidence:
    return MetricEvidence(name, (lo + hi) / 2, lo, hi, higher, margin, True, test=test)


SRM_OK = srm_test([10000, 10010], [1, 1])
SRM_BAD = srm_test([10000, 10600], [1, 1])
OK_ERR = MetricEvidence("error_rate", 0.0, -0.002, 0.002, False, unit="share", relative=False)
BAD_ERR = MetricEvidence("error_rate", 0.05, 0.03, 0.07, False, unit="share", relative=False)
UNSURE_P99 = rel("latency_p99_ms", -0.02, 0.08, margin=0.05, higher=False)
NI_SHORT = PowerResult(0.01, 0.05, 0.8, 9000, 3000, 0.3, 6.0, None, "non_inferiority", 6500)
NI_DONE = PowerResult(0.01, 0.05, 0.8, 9000, 9500, 0.85, 0.0, None, "non_inferiority", 6500)
REACHED = PowerResult(0.01, 0.05, 0.8, 1000, 1200, 0.9, 0.0)
SHORT = PowerResult(0.01, 0.05, 0.8, 5000, 1200, 0.3, 7.6)

NON_INFERIOR = rel("conversion", -0.011, 0.063, 0.02)
INFERIOR = rel("conversion", -0.09, -0.031, 0.02)
UNSURE = rel("conversion", -0.04, 0.03, 0.02)


@pytest.mark.parametrize("primary, guards, srm, power, action, status", [
    (NON_INFERIOR, [OK_ERR], SRM_OK, NI_SHORT, "ship", "non_inferior"),          # rule 5
    (NON_INFERIOR, [OK_ERR, BAD_ERR], SRM_OK, None, "roll back", "non_inferior"),  # rule 1
    (INFERIOR, [OK_ERR], SRM_OK, None, "roll back", "inferior"),                 # rule 2
    (NON_INFERIOR, [OK_ERR], SRM_BAD, None, "keep running", "non_inferior"),     # rule 3
    (NON_INFERIOR, [UNSURE_P99], SRM_OK, None, "keep running", "non_inferior"),  # rule 6
    (UNSURE, [OK_ERR], SRM_OK, NI_SHORT, "keep running", "inconclusive"),         # rule 8
    (UNSURE, [OK_ERR], SRM_OK, NI_DONE, "keep running", "inconclusive"),          # no "keep control"
    (rel("conversion", 0.01, 0.05, 0.02), [OK_ERR], SRM_OK, None, "ship", "non_inferior"),  # a win is non-inferior
])
def test_non_inferiority_rule_table(primary, guards, srm, power, action, status) -> None:  # type: ignore[no-untyped-def]
    rec = recommend(primary, guards, srm, power, decision="non_inferiority", variant="v2")
    assert (rec.action, rec.primary_status, rec.decision) == (action, status, "non_inferiority"), rec.reasons
    assert rec.primary is primary
    if srm is SRM_BAD:
        assert rec.reasons[0].startswith("sample ratio mismatch")


def test_non_inferiority_reasons_name_margin_interval_and_remaining_units() -> None:
    ship = recommend(NON_INFERIOR, [OK_ERR], SRM_OK, NI_SHORT, "non_inferiority", "v2")
    assert ship.reasons[0] == ("v2 is non-inferior on conversion: margin 2 %, 95 % always-valid interval "
                               "-1.1 % to +6.3 % (estimate +2.6 %)")
    assert not any("units per variant" in r for r in ship.reasons)  # decided: no power line
    wait = recommend(UNSURE, [OK_ERR], SRM_OK, NI_SHORT, "non_inferiority", "v2")
    assert wait.reasons[0].startswith("v2 is not yet shown non-inferior on conversion: margin 2 %")
    assert wait.reasons[-1] == ("about 6,000 more units per variant needed to show non-inferiority at the 2 % "
                                "margin if the true difference is 0 (3,000 of 9,000 so far; about 6.0 days at "
                                "the current rate); a single fixed-horizon look at the end would need 6,500 "
                                "per variant")
    bad = recommend(INFERIOR, [], SRM_OK, NI_SHORT, "non_inferiority", "v2")
    assert bad.reasons[0].startswith("v2 is worse than the margin allows on conversion")
    assert len(bad.reasons) == 1


def test_non_inferiority_edge_of_the_margin_and_lower_is_better() -> None:
    assert primary_status(rel("c", -0.02, 0.01, 0.02), "non_inferiority") == "inconclusive"  # lo == -m
    assert primary_status(rel("c", -0.05, -0.02, 0.02), "non_inferiority") == "inconclusive"  # hi == -m
    # latency 1 % to 3 % slower with a 5 % margin: non-inferior; 6 % to 9 % slower: inferior
    assert primary_status(rel("latency_ms", 0.01, 0.03, 0.05, higher=False), "non_inferiority") == "non_inferior"
    assert primary_status(rel("latency_ms", 0.06, 0.09, 0.05, higher=False), "non_inferiority") == "inferior"
    with pytest.raises(ValueError):
        primary_status(rel("c", -0.01, 0.01), "non_inferiority")  # no margin
    with pytest.raises(ValueError):
        recommend(NON_INFERIOR, decision="bayesian")


def test_superiority_flat_at_the_planned_sample_keeps_the_control() -> None:
    flat = MetricEvidence("conversion", 0.001, -0.006, 0.008, True, relative=False, unit="share")
    rec = recommend(flat, [OK_ERR], SRM_OK, REACHED)
    assert rec.action == "keep control" and rec.primary_status == "flat"
    assert rec.reasons[0] == "no detectable effect on conversion at the planned sample: keep the control"
    assert not any("units per variant" in r for r in rec.reasons)
    short = recommend(flat, [OK_ERR], SRM_OK, SHORT)
    assert short.action == "keep running"
    assert short.reasons[-1].startswith("about 3,800 more units per variant needed to detect the minimum")
    harm = recommend(MetricEvidence("conversion", -0.02, -0.03, -0.01, True, relative=False), [], SRM_OK, REACHED)
    assert harm.action == "roll back"
    assert recommend(flat, [BAD_ERR], SRM_OK, REACHED).action == "roll back"


def test_equivalence_guardrail_status() -> None:
    eq = lambda lo, hi: guardrail_status(rel("p99", lo, hi, 0.05, higher=False, test="equivalence"))  # noqa: E731
    assert eq(-0.04, 0.045) == "ok"
    assert eq(-0.04, 0.05) == "inconclusive"  # touches the margin
    assert eq(0.051, 0.09) == "breached" and eq(-0.2, -0.06) == "breached"  # entirely outside, either side
    assert eq(0.03, 0.09) == "inconclusive"
    rec = recommend(rel("conversion", 0.01, 0.05), [rel("p99", 0.06, 0.09, 0.05, False, "equivalence")])
    assert rec.action == "roll back"
    assert "outside the equivalence margin of +/-5 %" in rec.reasons[1]
    with pytest.raises(ValueError):
        rel("p99", -0.1, 0.1, None, test="equivalence")


def test_headline_order_ship_keep_running_keep_control_roll_back() -> None:
    def made(action: str) -> S.Recommendation:
        return S.Recommendation(action, (action,), "flat", ())  # type: ignore[arg-type]

    order = ["roll back", "keep control", "keep running", "ship"]
    for k in range(len(order)):
        recs = [(f"t{i}", made(a)) for i, a in enumerate(order[: k + 1])]
        assert headline(recs).action == order[k]
    assert headline([("a", made("roll back")), ("b", made("keep control"))]).variant == "b"


@pytest.mark.parametrize("evidence, words", [
    (MetricEvidence("conversion", 0.07293, 0.006953, 0.1389, True, relative=False, unit="share"),
     "conversion +7.3 points (95 % always-valid interval +0.7 to +13.9 points)"),
    (MetricEvidence("revenue", 0.124, 0.031, 0.21, True), "revenue +12.4 % (95 % always-valid interval +3.1 % to +21.0 %)"),
    (MetricEvidence("latency_ms", -38.2, -45.1, -31.4, False, relative=False, unit="ms"),
     "latency_ms -38 ms (95 % always-valid interval -45 to -31 ms)"),
    (MetricEvidence("error_rate", 0.0012, -0.0004, 0.0028, False, relative=False, unit="share", alpha=0.1),
     "error_rate +0.12 points (90 % always-valid interval -0.04 to +0.28 points)"),
    (MetricEvidence("orders", 0.5, 0.25, 0.75, True, relative=False),
     "orders +0.50 (95 % always-valid interval +0.25 to +0.75)"),
    (MetricEvidence("error_rate", 0.0, 0.0, 0.0, False, relative=False, unit="share", control_mean=0.0,
                    treatment_mean=0.0, interval="exact"),
     "error_rate unchanged: 0.0 % vs 0.0 % (no variation in either variant)"),
])
def test_effects_are_worded_with_units(evidence: MetricEvidence, words: str) -> None:
    assert evidence.describe() == words


def test_constant_arms_are_worded_from_an_analysis() -> None:
    zero = S.MeanStats(n=50, sum=0.0, sum_sq=0.0)
    analysis = S.analyze(S.welch_test(zero, zero), False, 5000)
    ev = S.metric_evidence("error_rate", False, analysis, None, unit="share")
    assert ev.describe() == "error_rate unchanged: 0.0 % vs 0.0 % (no variation in either variant)"
    assert guardrail_status(ev) == "ok"
