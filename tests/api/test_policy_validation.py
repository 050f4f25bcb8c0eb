"""Decision policy, margins, quality sampling and cost metrics in experiment payloads: each bad
input is a 422 naming its field, and nothing is written (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from abtest.models import AuditEntry, Experiment, Metric, Variant
from tests.conftest import experiment_payload

CONTROL = {"key": "control", "engine": "v1-fp32", "weight": 0.5, "control": True}
TREATMENT = {"key": "treatment", "engine": "v2-int4", "weight": 0.5}
CONVERSION = {"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary"}


def rows(services: Any) -> tuple[int, ...]:
    with services.db.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Experiment, Variant, Metric, AuditEntry))


def non_inferiority(**overrides: Any) -> dict[str, Any]:
    return experiment_payload(**{"decision": "non_inferiority", "metrics": [{**CONVERSION, "margin": 0.02}],
                                 **overrides})


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("ni-without-margin", experiment_payload(decision="non_inferiority", metrics=[CONVERSION]), "metrics[0].margin"),
    ("ni-zero-margin", experiment_payload(decision="non_inferiority", metrics=[{**CONVERSION, "margin": 0}]),
     "metrics[0].margin"),
    ("ni-without-primary", experiment_payload(decision="non_inferiority", metrics=[
        {"name": "error_rate", "role": "guardrail"}]), "metrics"),
    ("unknown-decision", experiment_payload(decision="best_effort"), "decision"),
    ("margin-on-superiority-primary", experiment_payload(metrics=[{**CONVERSION, "margin": 0.02}]),
     "metrics[0].margin"),
    ("margin-on-secondary", experiment_payload(metrics=[CONVERSION, {"name": "latency_ms", "margin": 0.1}]),
     "metrics[1].margin"),
    ("equivalence-on-primary", non_inferiority(metrics=[{**CONVERSION, "margin": 0.02, "test": "equivalence"}]),
     "metrics[0].test"),
    ("equivalence-without-margin", experiment_payload(metrics=[
        CONVERSION, {"name": "error_rate", "role": "guardrail", "test": "equivalence"}]), "metrics[1].margin"),
    ("unknown-test", experiment_payload(metrics=[
        CONVERSION, {"name": "error_rate", "role": "guardrail", "margin": 0.1, "test": "superior"}]),
     "metrics[1].test"),
    ("cost-per-event-without-event", experiment_payload(metrics=[
        CONVERSION, {"name": "cost_per_purchase", "kind": "cost_per_event"}]), "metrics[1].event"),
    ("quality-sample-zero", non_inferiority(quality_sample=0), "quality_sample"),
    ("quality-sample-above-one", non_inferiority(quality_sample=1.5), "quality_sample"),
    ("quality-sample-text", non_inferiority(quality_sample="5%"), "quality_sample"),
    ("unknown-reference", non_inferiority(quality_sample=0.05, variants=[
        CONTROL, {**TREATMENT, "quality_reference": "v9-fp64"}]), "variants[1].quality_reference"),
    ("own-engine-reference", non_inferiority(quality_sample=0.05, variants=[
        CONTROL, {**TREATMENT, "quality_reference": "v2-int4"}]), "variants[1].quality_reference"),
    ("reference-without-sample", non_inferiority(variants=[
        CONTROL, {**TREATMENT, "quality_reference": "v1-fp32"}]), "variants[1].quality_reference"),
    ("floor-without-reference", non_inferiority(quality_sample=0.05, variants=[
        CONTROL, {**TREATMENT, "quality_min_agreement": 0.97}]), "variants[1].quality_min_agreement"),
    ("floor-above-one", non_inferiority(quality_sample=0.05, variants=[
        CONTROL, {**TREATMENT, "quality_reference": "v1-fp32", "quality_min_agreement": 1.2}]),
     "variants[1].quality_min_agreement"),
]


@pytest.mark.parametrize(("payload", "field"), [(p, f) for _, p, f in BAD], ids=[name for name, _, _ in BAD])
def test_bad_policy_is_422_naming_the_field_and_writes_nothing(client, admin, services, payload, field) -> None:
    before = rows(services)
    reply = client.post("/v1/experiments", json=payload, headers=admin)
    assert reply.status_code == 422, reply.get_json()
    error = reply.get_json()["error"]
    assert error["details"]["field"] == field, error
    assert rows(services) == before


def test_a_non_inferiority_experiment_round_trips(client, admin, make_experiment) -> None:
    created = make_experiment(**non_inferiority(key="exp-1",
        quality_sample=0.05,
        variants=[CONTROL, {**TREATMENT, "quality_reference": "v1-fp32", "quality_min_agreement": 0.97}],
        metrics=[{**CONVERSION, "margin": 0.02},
                 {"name": "error_rate", "role": "guardrail", "margin": 0.5, "test": "equivalence"},
                 {"name": "cost_per_purchase", "kind": "cost_per_event", "event": "purchase"}]))
    assert created["decision"] == "non_inferiority" and created["quality_sample"] == 0.05
    assert created["variants"][1]["quality_reference"] == "v1-fp32"
    assert created["variants"][1]["quality_min_agreement"] == 0.97
    assert "quality_reference" not in created["variants"][0]
    metrics = {m["name"]: m for m in created["metrics"]}
    assert metrics["conversion"]["margin"] == 0.02
    assert metrics["error_rate"]["test"] == "equivalence"
    assert metrics["cost_per_purchase"]["kind"] == "cost_per_event"
    assert metrics["cost_per_purchase"]["direction"] == "decrease"  # lower cost per event is better
    assert client.get("/v1/experiments/exp-1", headers=admin).get_json() == created


def test_patch_checks_the_policy_against_the_stored_metrics(client, admin, make_experiment, services) -> None:
    make_experiment()  # superiority, conversion primary without a margin
    before = rows(services)
    reply = client.patch("/v1/experiments/exp-1", json={"decision": "non_inferiority"}, headers=admin)
    assert reply.status_code == 422 and reply.get_json()["error"]["details"]["field"] == "metrics[0].margin"
    assert rows(services) == before
    reply = client.patch("/v1/experiments/exp-1", headers=admin, json={
        "decision": "non_inferiority", "metrics": [{**CONVERSION, "margin": 0.05}]})
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["decision"] == "non_inferiority"
    entries = client.get("/v1/experiments/exp-1/audit", headers=admin).get_json()["entries"]
    assert entries[-1]["changes"]["decision"] == {"from": "superiority", "to": "non_inferiority"}


def test_a_quality_reference_change_keeps_the_phase(client, admin, make_experiment) -> None:
    make_experiment(start=True, quality_sample=0.1)
    reply = client.patch("/v1/experiments/exp-1", headers=admin, json={
        "variants": [CONTROL, {**TREATMENT, "quality_reference": "v1-fp32"}]})
    assert reply.status_code == 200, reply.get_json()
    body = reply.get_json()
    assert body["phase"] == 1  # the allocation did not change: no new phase
    assert body["variants"][1]["quality_reference"] == "v1-fp32"
    reply = client.patch("/v1/experiments/exp-1", headers=admin, json={"quality_sample": None})
    assert reply.status_code == 422  # the reference still needs a sample
    assert reply.get_json()["error"]["details"]["field"] == "variants[1].quality_reference"
