"""The quality floor guardrail: a variant's ``quality_min_agreement`` must be reached by the top-1
agreement with its ``quality_reference`` (the report's quality section), else no ship."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sqlalchemy import insert

from abtest.models import QualityScore
from abtest.stats import MetricEvidence, guardrail_status, recommend

from .factories import T0, simple

N = {"control": 3000, "treatment": 3000}
CONV = {"control": 0.30, "treatment": 0.30}
ERR = {"control": 0.0, "treatment": 0.0}
LAT = {"control": 300.0, "treatment": 200.0}


def floor(lo: float | None, hi: float | None, at: float = 0.97) -> MetricEvidence:
    est = None if lo is None or hi is None else (lo + hi) / 2
    return MetricEvidence("top-1 agreement with v2-fp32", est, lo, hi, True, None, False, unit="share",
                          test="floor", floor=at, error=None if est is not None else "no scored requests yet")


@pytest.mark.parametrize(("lo", "hi", "status"), [
    (0.975, 0.99, "ok"), (0.97, 0.99, "ok"), (0.96, 0.99, "inconclusive"), (0.90, 0.969, "breached"),
    (None, None, "unavailable")])
def test_floor_status(lo, hi, status) -> None:  # type: ignore[no-untyped-def]
    assert guardrail_status(floor(lo, hi)) == status


def test_floor_needs_a_floor_and_higher_is_better() -> None:
    with pytest.raises(ValueError):
        MetricEvidence("x", 0.5, 0.4, 0.6, True, test="floor")
    with pytest.raises(ValueError):
        MetricEvidence("x", 0.5, 0.4, 0.6, False, test="floor", floor=0.3)
    with pytest.raises(ValueError):
        MetricEvidence("x", 0.5, 0.4, 0.6, True, floor=0.3)


def test_floor_decides_with_the_primary() -> None:
    win = MetricEvidence("conversion", 0.05, 0.01, 0.09, True, relative=False, unit="share")
    assert recommend(win, [floor(0.975, 0.99)]).action == "ship"
    assert recommend(win, [floor(0.96, 0.99)]).action == "keep running"
    breached = recommend(win, [floor(0.90, 0.95)])
    assert breached.action == "roll back"
    assert any(r.startswith("guardrail breached: top-1 agreement with v2-fp32 92.5 %") and r.endswith("below 97.0 %")
               for r in breached.reasons), breached.reasons


def _scores(f, variant: str, agree_share: float, units: int, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    rows = []
    for i in range(units):
        tokens = 8
        agree = int(rng.binomial(tokens, agree_share))
        rows.append({"request_id": str(uuid.uuid4()), "experiment_id": f.experiment_id, "phase": f.phase,
                     "variant": variant, "unit_id": f"{variant}-{i}", "comparison": "reference",
                     "generator": "v2-int4", "scorer": "v2-fp32", "method": "logprobs", "status": "ok",
                     "error_code": None, "tokens": tokens, "agree": agree, "kl_sum": 0.01 * tokens,
                     "similarity": None, "created_at": T0})
    with f.engine.begin() as conn:
        conn.execute(insert(QualityScore), rows)


VARIANTS = [{"key": "control", "engine": "v1-fp32", "weight": 0.5, "control": True},
            {"key": "treatment", "engine": "v2-int4", "weight": 0.5, "quality_reference": "v2-fp32",
             "quality_min_agreement": 0.97}]
NI = {"decision": "non_inferiority", "quality_sample": 0.1, "variants": VARIANTS,
      "metrics": [{"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary", "margin": 0.25},
                  {"name": "error_rate", "role": "guardrail"}]}


@pytest.mark.parametrize(("agreement", "action", "status"), [(0.995, "ship", "ok"), (0.80, "roll back", "breached")])
def test_the_report_applies_the_floor(factory, report_of, agreement, action, status) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1", **NI)
    rng = np.random.default_rng(5)
    simple(f, rng, N, CONV, ERR, LAT)
    f.flush()
    _scores(f, "treatment", agreement, 300, rng)
    report = report_of()
    rec = report["recommendations"][0]
    assert rec["action"] == action, rec["reasons"]
    assert {g["metric"]: g["status"] for g in rec["guardrails"]}["top-1 agreement with v2-fp32"] == status
    [result] = [r for r in report["quality"]["results"] if r["comparison"] == "reference"]
    reason = next(r for r in rec["reasons"] if "top-1 agreement with v2-fp32" in r)
    assert f"{100 * result['agreement']['estimate']:.1f} %" in reason


def test_no_scores_yet_keeps_it_running(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1", **NI)
    simple(f, np.random.default_rng(6), N, CONV, ERR, LAT)
    f.flush()
    rec = report_of()["recommendations"][0]
    assert rec["action"] != "ship"
    assert {g["metric"]: g["status"] for g in rec["guardrails"]}["top-1 agreement with v2-fp32"] == "unavailable"


def test_the_console_summary_shows_the_quality_section(factory, services) -> None:  # type: ignore[no-untyped-def]
    from abtest.reports import ReportOptions, build_report
    from abtest.reports.text import render_text

    f = factory("exp-1", **NI)
    rng = np.random.default_rng(7)
    simple(f, rng, {"control": 50, "treatment": 50}, CONV, ERR, LAT)
    f.flush()
    _scores(f, "treatment", 0.99, 40, rng)
    with services.db.session() as session:
        report = build_report(session, "exp-1", ReportOptions())
    [result] = report.quality.results
    text = render_text(report)
    a = result.agreement
    assert (f"quality (reference): v2-fp32 scores v2-int4 for treatment: top-1 agreement {100 * a.estimate:.1f} % "
            f"(95% CI {100 * a.ci_lower:.1f} % to {100 * a.ci_upper:.1f} %)") in text
    assert "40 scored requests, 40 units" in text and "quality jobs not scored: 0 failed, 0 dropped" in text
