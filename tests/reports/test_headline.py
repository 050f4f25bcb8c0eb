"""The headline: one sentence whose every number is one of the report's own fields.

Synthetic reports (dataclasses built here) cover the decision policies and actions; each
sentence is parsed back and every number compared with the field it must come from, to the
precision it is printed with. A report built from logged data is checked the same way.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, fields, replace
from typing import Any

import numpy as np
import pytest

from abtest.reports import model as M
from abtest.reports.headline import build_headline

from .factories import simple

NUMBER = r"[+-]?\d[\d,]*(?:\.\d+)?"


def make(cls: type, **values: Any) -> Any:
    """An instance with the given fields, None for any other required field."""
    missing = {f.name: None for f in fields(cls) if f.name not in values
               and f.default is MISSING and f.default_factory is MISSING}  # type: ignore[misc]
    return cls(**values, **missing)


def effect(estimate: float | None, lo: float | None, hi: float | None) -> M.EffectView:
    return M.EffectView(estimate, None, lo, hi, None)


def comparison(variant: str, rel: tuple[float, float, float], seq_abs: tuple[float, float, float] | None = None,
               seq_rel: tuple[float, float, float] | None = None, error: str | None = None) -> M.ComparisonResult:
    seq_abs = seq_abs or rel
    seq_rel = seq_rel or rel
    return M.ComparisonResult(
        variant=variant, control_estimate=0.2, treatment_estimate=0.21, absolute=effect(*rel),
        relative=None if error else effect(*rel), p_value=0.1, adjusted_p_value=0.2, significant=False,
        sequential=M.SequentialView(effect(*seq_abs), effect(*seq_rel), 0.3, False, 5000.0),
        chance_to_win=0.6, expected_loss=M.ExpectedLoss(None, None, "relative"), error=error, relative_error=None)


def metric(name: str, kind: str, role: str, comp: M.ComparisonResult, margin: float = 0.0,
           direction: str = "decrease") -> M.MetricResult:
    est = M.Estimate(100, 0.2, 0.1, 0.3, 0.05, None)
    return M.MetricResult(name, kind, "mean" if kind == "binary" else "ratio", role, direction, margin,
                          None, None, {"control": est, "treatment": est}, (comp,))


def report(*, decision: str, action: str, primary: M.MetricResult, extra: tuple[M.MetricResult, ...] = (),
           guardrails: tuple[M.GuardrailResult, ...] = (), power: M.PowerPlan | None = None,
           quality: M.QualitySection | None = None, srm: bool = False) -> M.Report:
    rec = make(M.TreatmentRecommendation, variant="treatment", action=action, reasons=("r",),
               primary_metric=primary.name, primary_status="x", guardrails=guardrails, power=power)
    options = make(M.Options, alpha=0.05, cap=None, cap_value_ms=None, quantiles=None, mde=0.05, n_star=5000.0,
                   multiple_testing=M.MultipleTesting("holm", 3), recommendation_basis="", decision=decision,
                   phase=1)
    return M.Report(
        recommendation=M.OverallRecommendation(action, "treatment", ("r",)), headline="",
        experiment=None,  # type: ignore[arg-type]
        generated_at="2026-12-01T19:42:00+00:00", options=options,
        srm=M.SRMBlock(srm, 0.5, 0.4, 0.001, "ok", ()),
        variants=(M.VariantSummary("control", "v1-fp32", True, 0.5, 100, 100, 200, 0, 0),
                  M.VariantSummary("treatment", "v2-int4", False, 0.5, 100, 100, 200, 0, 0)),
        metrics=(primary, *extra), recommendations=(rec,), timeseries=None, latency_histogram=None, shadow=(),
        quality=quality)


def power(current: int, required: int) -> M.PowerPlan:
    return make(M.PowerPlan, mde_relative=0.02, absolute_mde=0.004, required_units_per_variant=required,
                current_units_per_variant=current, achieved_power=0.3, days_to_go=2.0, error=None)


def quality(agreement: float) -> M.QualitySection:
    est = M.Estimate(50, agreement, agreement - 0.01, agreement + 0.01, 0.005, None)
    return M.QualitySection(0.05, (M.QualityResult("reference", "treatment", "v2-int4", "v2-fp32", "logprobs", 400, 50,
                                                   est, None),), 0, 0, "")


def close(text: str, value: float, scale: float = 1.0) -> bool:
    """``text`` (as printed) equals ``value * scale`` to the precision it was printed with."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return abs(float(text.replace(",", "")) - value * scale) <= 0.5 * 10 ** -decimals + 1e-9


P50 = metric("latency_p50_ms", "builtin", "secondary", comparison("treatment", (-0.791, -0.80, -0.78)))
COST = metric("cost_per_request", "builtin", "secondary", comparison("treatment", (-0.8127, -0.83, -0.79)))


def test_non_inferior_ship_reads_every_number_from_the_report() -> None:
    conv = metric("conversion", "binary", "primary",
                  comparison("treatment", (0.02, 0.004, 0.041), seq_rel=(0.02, -0.011, 0.063)),
                  margin=0.02, direction="increase")
    r = report(decision="non_inferiority", action="ship", primary=conv, extra=(P50, COST), quality=quality(0.9812))
    text = build_headline(r)
    m = re.fullmatch(rf"v2-int4 is non-inferior on conversion \(margin ({NUMBER}) %: CI ({NUMBER}) % to "
                     rf"({NUMBER}) %\), ({NUMBER}) % faster at p50, ({NUMBER}) % cheaper per request, "
                     rf"({NUMBER}) % top-1 agreement with its reference v2-fp32: ship\.", text)
    assert m, text
    margin, lo, hi, p50, cost, agreement = m.groups()
    seq = conv.comparisons[0].sequential.relative
    assert close(margin, conv.margin, 100) and close(lo, seq.ci_lower, 100) and close(hi, seq.ci_upper, 100)
    assert lo.startswith("-") and hi.startswith("+")
    assert close(p50, -P50.comparisons[0].relative.estimate, 100)
    assert close(cost, -COST.comparisons[0].relative.estimate, 100)
    assert close(agreement, r.quality.results[0].agreement.estimate, 100)


def test_keep_running_names_the_units_and_leaves_out_missing_cost_and_quality() -> None:
    conv = metric("conversion", "binary", "primary",
                  comparison("treatment", (0.0, -0.03, 0.02), seq_rel=(0.0, -0.05, 0.04)),
                  margin=0.02, direction="increase")
    failed_cost = metric("cost_per_request", "builtin", "secondary",
                         comparison("treatment", (0.0, 0.0, 0.0), error="no price for engine v1-fp32"))
    r = report(decision="non_inferiority", action="keep running", primary=conv, extra=(failed_cost,),
               power=power(1234, 20000))
    text = build_headline(r)
    m = re.fullmatch(rf"v2-int4 is not yet shown non-inferior on conversion \(margin ({NUMBER}) %: CI ({NUMBER}) % "
                     rf"to ({NUMBER}) %\): keep running \(({NUMBER}) of ({NUMBER}) units per variant so far\)\.", text)
    assert m, text
    margin, lo, hi, current, required = m.groups()
    assert close(margin, 0.02, 100) and close(lo, -0.05, 100) and close(hi, 0.04, 100)
    assert int(current.replace(",", "")) == 1234 and int(required.replace(",", "")) == 20000
    assert "cheaper" not in text and "agreement" not in text


def test_superiority_ship_reads_the_absolute_interval_in_points() -> None:
    conv = metric("conversion", "binary", "primary",
                  comparison("treatment", (0.3, -0.01, 0.6), seq_abs=(0.073, 0.007, 0.139)), direction="increase")
    text = build_headline(report(decision="superiority", action="ship", primary=conv, extra=(P50,)))
    m = re.fullmatch(rf"v2-int4 improves conversion \(CI ({NUMBER}) to ({NUMBER}) points\), ({NUMBER}) % faster "
                     rf"at p50: ship\.", text)
    assert m, text
    lo, hi, p50 = m.groups()
    assert close(lo, 0.007, 100) and close(hi, 0.139, 100) and close(p50, 0.791, 100)


def test_keep_control_is_a_conclusion() -> None:
    conv = metric("conversion", "binary", "primary", comparison("treatment", (0.0, -0.02, 0.02),
                                                                seq_abs=(0.0, -0.004, 0.005)), direction="increase")
    slower = metric("latency_p50_ms", "builtin", "secondary", comparison("treatment", (0.12, 0.1, 0.14)))
    text = build_headline(report(decision="superiority", action="keep control", primary=conv, extra=(slower,),
                                 power=power(30000, 20000)))
    m = re.fullmatch(rf"v2-int4 shows no detectable effect on conversion \(CI ({NUMBER}) to ({NUMBER}) points\), "
                     rf"({NUMBER}) % slower at p50: keep the control\.", text)
    assert m, text
    assert close(m.group(1), -0.004, 100) and close(m.group(2), 0.005, 100) and close(m.group(3), 0.12, 100)


def test_roll_back_names_the_harm_and_the_breached_guardrail() -> None:
    conv = metric("conversion", "binary", "primary", comparison("treatment", (-0.2, -0.3, -0.1),
                                                                seq_abs=(-0.05, -0.081, -0.019)), direction="increase")
    text = build_headline(report(decision="superiority", action="roll back", primary=conv,
                                 guardrails=(M.GuardrailResult("error_rate", "breached"),
                                             M.GuardrailResult("latency_p99_ms", "ok"))))
    m = re.fullmatch(rf"v2-int4 is worse on conversion \(CI ({NUMBER}) to ({NUMBER}) points\), guardrail breached "
                     rf"on error_rate: roll back\.", text)
    assert m, text
    assert close(m.group(1), -0.081, 100) and close(m.group(2), -0.019, 100)


def test_non_inferiority_lost_beyond_the_margin_and_a_flagged_split() -> None:
    conv = metric("conversion", "binary", "primary", comparison("treatment", (-0.1, -0.15, -0.05)),
                  margin=0.025, direction="increase")
    text = build_headline(report(decision="non_inferiority", action="roll back", primary=conv, srm=True))
    m = re.fullmatch(rf"v2-int4 is worse than the margin allows on conversion \(margin ({NUMBER}) %: CI ({NUMBER}) % "
                     rf"to ({NUMBER}) %\): the traffic split is off \(sample ratio mismatch\), roll back\.", text)
    assert m, text
    assert close(m.group(1), 0.025, 100) and close(m.group(2), -0.15, 100) and close(m.group(3), -0.05, 100)


def test_no_treatment_and_no_estimate() -> None:
    conv = metric("conversion", "binary", "primary", comparison("treatment", (0, 0, 0), error="a variant has no units"),
                  direction="increase")
    undefined = replace(conv.comparisons[0], sequential=M.SequentialView(None, None, None, False, 5000.0))
    r = report(decision="superiority", action="keep running", primary=replace(conv, comparisons=(undefined,)))
    assert build_headline(r) == "v2-int4 has no estimate on conversion yet: keep running."
    dark = replace(r, recommendation=M.OverallRecommendation("keep running", None, ("x",)), recommendations=())
    assert build_headline(dark) == "No treatment to compare with the control: keep running."


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_headline_of_a_logged_experiment_matches_its_json(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    simple(f, np.random.default_rng(3), {"control": 400, "treatment": 400}, {"control": 0.1, "treatment": 0.3},
           {"control": 0.01, "treatment": 0.01}, {"control": 400.0, "treatment": 250.0})
    f.flush()
    body = report_of()
    assert list(body)[:2] == ["recommendation", "headline"]
    conv = next(m for m in body["metrics"] if m["name"] == "conversion")
    p50 = next(m for m in body["metrics"] if m["name"] == "latency_p50_ms")
    seq = conv["comparisons"][0]["sequential"]["absolute"]
    m = re.match(rf"v2-int4 improves conversion \(CI ({NUMBER}) to ({NUMBER}) points\), ({NUMBER}) % faster at p50: "
                 rf"{body['recommendation']['action']}", body["headline"])
    assert m, body["headline"]
    assert close(m.group(1), seq["ci_lower"], 100) and close(m.group(2), seq["ci_upper"], 100)
    assert close(m.group(3), -p50["comparisons"][0]["relative"]["estimate"], 100)
    counts = {v: e["count"] for v, e in conv["variants"].items()}
    assert counts["control"]["of"] == "units" and counts["control"]["denominator"] == 400
    converted = {v: sum(1 for e in f.log.events if e["unit_id"].startswith(f"{v}-")) for v in ("control", "treatment")}
    assert {v: c["numerator"] for v, c in counts.items()} == converted
