"""Guardrail auto-stop: breach -> treatment paused + audit entry (one transaction) -> report."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from abtest.models import AuditEntry, Experiment
from abtest.services.guardrails import check_all_running, check_guardrails

from .factories import simple

N = {"control": 600, "treatment": 600}
CONV = {"control": 0.1, "treatment": 0.1}
LAT = {"control": 300.0, "treatment": 300.0}
BAD_ERR = {"control": 0.01, "treatment": 0.2}
OK_ERR = {"control": 0.02, "treatment": 0.02}


def _audit(services, key: str) -> list[AuditEntry]:  # type: ignore[no-untyped-def]
    with services.db.session() as s:
        exp_id = s.scalar(select(Experiment.id).where(Experiment.key == key))
        return list(s.scalars(select(AuditEntry).where(AuditEntry.experiment_id == exp_id,
                                                       AuditEntry.action == "guardrail_breach")))


def test_breach_pauses_treatment_audits_and_shows_on_report(factory, services, client, admin) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    simple(f, np.random.default_rng(1), N, CONV, BAD_ERR, LAT)
    f.flush()
    result = check_guardrails(services.db, "exp-1")
    assert result.checked and result.paused
    assert [b["metric"] for b in result.breaches] == ["error_rate"]
    assert result.breaches[0]["basis"] == "absolute"
    assert result.breaches[0]["absolute_sequential_ci"][0] > 0  # confidently worse (higher error rate)
    entries = _audit(services, "exp-1")
    assert len(entries) == 1 and entries[0].actor == "guardrail-monitor"
    assert entries[0].changes["reason"].startswith("guardrail breached: error_rate of treatment is 0.2")
    assert entries[0].changes["treatment_paused"] == {"from": False, "to": True}
    shown = client.get("/v1/experiments/exp-1", headers=admin).get_json()
    assert shown["treatment_paused"] is True
    report = client.get("/v1/experiments/exp-1/report", headers=admin).get_json()
    assert report["experiment"]["treatment_paused"] is True
    assert report["experiment"]["last_guardrail_breach"]["reason"] == entries[0].changes["reason"]
    html = client.get("/v1/experiments/exp-1/report?format=html", headers=admin).get_data(as_text=True)
    assert 'id="guardrail-banner"' in html
    again = check_guardrails(services.db, "exp-1")  # already paused: not checked twice
    assert not again.checked and again.skipped == "treatment already paused"
    assert len(_audit(services, "exp-1")) == 1


def test_healthy_guardrails_change_nothing(factory, services) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    simple(f, np.random.default_rng(2), N, CONV, OK_ERR, LAT)
    f.flush()
    result = check_guardrails(services.db, "exp-1")
    assert result.checked and not result.paused and not result.breaches
    assert {s["metric"] for s in result.statuses} == {"error_rate", "latency_p99_ms"}
    assert all(s["status"] != "breached" for s in result.statuses)
    assert _audit(services, "exp-1") == []


@pytest.mark.parametrize(("margin", "paused"), [(0.0, True), (1.0, False)])
def test_margin_tolerates_bounded_harm(factory, services, margin, paused) -> None:  # type: ignore[no-untyped-def]
    metrics = [{"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary"},
               {"name": "error_rate", "role": "guardrail", "margin": margin}]  # relative: 1.0 = +100%
    f = factory("exp-1", metrics=metrics)
    simple(f, np.random.default_rng(8), {"control": 1500, "treatment": 1500}, CONV,
           {"control": 0.10, "treatment": 0.14}, LAT)
    f.flush()
    result = check_guardrails(services.db, "exp-1")
    assert result.checked and result.paused is paused
    assert [s["metric"] for s in result.statuses] == ["error_rate"]


def test_check_all_running_covers_running_experiments_only(factory, make_experiment, services) -> None:  # type: ignore[no-untyped-def]
    bad = factory("exp-bad")
    simple(bad, np.random.default_rng(3), N, CONV, BAD_ERR, LAT)
    bad.flush()
    good = factory("exp-good")
    simple(good, np.random.default_rng(4), {"control": 100, "treatment": 100}, CONV, OK_ERR, LAT)
    good.flush()
    make_experiment("exp-draft")
    results = {r.experiment: r for r in check_all_running(services.db)}
    assert set(results) == {"exp-bad", "exp-good"}
    assert results["exp-bad"].paused and not results["exp-good"].paused


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_draft_is_skipped(make_experiment, services) -> None:  # type: ignore[no-untyped-def]
    make_experiment("exp-1")
    result = check_guardrails(services.db, "exp-1")
    assert not result.checked and result.skipped == "experiment is draft"
