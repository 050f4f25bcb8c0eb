"""/v1/experiments on SQLite and PostgreSQL: lifecycle, audit, validation, nothing half-written."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from abtest.models import AuditEntry, Experiment, Metric, Variant
from tests.conftest import experiment_payload


def count_rows(services: Any) -> tuple[int, int, int, int]:
    with services.db.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Experiment, Variant, Metric, AuditEntry))


def test_create_show_list(client, admin, make_experiment) -> None:
    created = make_experiment("exp-1")
    assert created["status"] == "draft" and created["phase"] == 1
    assert [v["key"] for v in created["variants"]] == ["control", "treatment"]
    assert created["variants"][0]["control"] is True
    metric_names = {m["name"]: m["role"] for m in created["metrics"]}
    assert metric_names == {"conversion": "primary", "error_rate": "guardrail", "latency_p99_ms": "guardrail"}
    assert client.get("/v1/experiments/exp-1", headers=admin).get_json() == created
    listed = client.get("/v1/experiments", headers=admin).get_json()["experiments"]
    assert [e["key"] for e in listed] == ["exp-1"]
    assert client.get("/v1/experiments?status=running", headers=admin).get_json() == {"experiments": []}


def test_lifecycle_and_illegal_transitions(client, admin, make_experiment) -> None:
    make_experiment("exp-1")
    def act(action: str) -> Any:
        return client.post(f"/v1/experiments/exp-1/{action}", headers=admin)
    assert act("pause").status_code == 409
    assert act("stop").status_code == 409
    assert act("start").get_json()["status"] == "running"
    assert act("start").status_code == 409
    assert act("pause").get_json()["status"] == "paused"
    assert act("start").get_json()["status"] == "running"
    assert act("stop").get_json()["status"] == "stopped"
    for action in ("start", "pause", "stop"):
        reply = act(action)
        assert reply.status_code == 409
        assert reply.get_json()["error"]["code"] == "conflict"
    assert client.patch("/v1/experiments/exp-1", json={"name": "x"}, headers=admin).status_code == 409


def test_audit_log_records_every_change_with_actor(client, admin, make_experiment) -> None:
    make_experiment("exp-1", start=True)
    client.patch("/v1/experiments/exp-1", json={"coverage": 0.5, "owner": "new-owner"}, headers=admin)
    entries = client.get("/v1/experiments/exp-1/audit", headers=admin).get_json()["entries"]
    assert [e["action"] for e in entries] == ["create", "start", "update"]
    assert {e["actor"] for e in entries} == {"test-admin"}
    assert entries[1]["changes"] == {"status": {"from": "draft", "to": "running"}}
    assert entries[2]["changes"]["coverage"] == {"from": 1.0, "to": 0.5}
    assert entries[2]["changes"]["owner"] == {"from": "team-llm", "to": "new-owner"}


def test_weight_change_on_started_experiment_opens_new_phase(client, admin, make_experiment) -> None:
    make_experiment("draft-exp")
    variants = [{"key": "control", "engine": "v1-fp32", "weight": 0.8, "control": True},
                {"key": "treatment", "engine": "v2-int4", "weight": 0.2}]
    reply = client.patch("/v1/experiments/draft-exp", json={"variants": variants}, headers=admin)
    assert reply.get_json()["phase"] == 1  # not started: nothing to protect
    make_experiment("live", start=True)
    reply = client.patch("/v1/experiments/live", json={"variants": variants}, headers=admin)
    assert reply.status_code == 200 and reply.get_json()["phase"] == 2
    assert [v["weight"] for v in reply.get_json()["variants"]] == [0.8, 0.2]
    reply = client.patch("/v1/experiments/live", json={"coverage": 0.3}, headers=admin)
    assert reply.get_json()["phase"] == 2  # coverage ramps keep the phase


def test_layers_allocate_disjoint_ranges(client, admin, make_experiment) -> None:
    a = make_experiment("a", layer="home", layer_share=0.6)
    b = make_experiment("b", layer="home", layer_share=0.4)
    assert a["layer_range"] == [0.0, 0.6]
    assert b["layer_range"] == pytest.approx([0.6, 1.0])
    reply = client.post("/v1/experiments", json=experiment_payload("c", layer="home", layer_share=0.1), headers=admin)
    assert reply.status_code == 409 and reply.get_json()["error"]["details"] == {"field": "layer_share"}


def test_duplicate_key_conflicts_and_writes_nothing(client, admin, make_experiment, services) -> None:
    make_experiment("exp-1")
    before = count_rows(services)
    reply = client.post("/v1/experiments", json=experiment_payload("exp-1"), headers=admin)
    assert reply.status_code == 409
    assert reply.get_json()["error"]["details"] == {"field": "key"}
    assert count_rows(services) == before


def _variants(*weights: float, engines: tuple[str, ...] = ("v1-fp32", "v2-int4")) -> list[dict]:
    return [{"key": f"v{i}", "engine": engines[i % len(engines)], "weight": w} for i, w in enumerate(weights)]


BAD_PAYLOADS = [
    ({"key": "Bad Key!"}, "key"),
    ({"key": None}, "key"),
    ({"surprise": 1}, "surprise"),
    ({"coverage": 1.5}, "coverage"),
    ({"coverage": "all"}, "coverage"),
    ({"variants": _variants(0.5, 0.6)}, "variants"),
    ({"variants": _variants(-0.5, 1.5)}, "variants[0].weight"),
    ({"variants": _variants(1.0)}, "variants"),
    ({"variants": "two"}, "variants"),
    ({"variants": [{"key": "a", "engine": "v1-fp32", "weight": 0.5},
                   {"key": "a", "engine": "v2-int4", "weight": 0.5}]}, "variants[1].key"),
    ({"variants": [{"engine": "v1-fp32", "weight": 0.5},
                   {"key": "b", "engine": "v2-int4", "weight": 0.5}]}, "variants[0].key"),
    ({"variants": _variants(0.5, 0.5, engines=("v1-fp32", "gpt-9"))}, "variants[1].engine"),
    ({"variants": [{"key": "a", "engine": "v1-fp32", "weight": 0.5, "control": True},
                   {"key": "b", "engine": "v2-int4", "weight": 0.5, "control": True}]}, "variants[1].control"),
    ({"variants": [{"key": "a", "engine": "v1-fp32", "weight": True},
                   {"key": "b", "engine": "v2-int4", "weight": 0.5}]}, "variants[0].weight"),
    ({"metrics": [{"name": "conversion", "kind": "binary"}]}, "metrics[0].event"),
    ({"metrics": [{"name": "c", "event": "e", "kind": "ratio"}]}, "metrics[0].kind"),
    ({"metrics": [{"name": "error_rate", "event": "e"}]}, "metrics[0].event"),
    ({"targeting": [{"attribute": "a", "op": "like", "value": 1}]}, "targeting[0].op"),
    ({"targeting": [{"attribute": "a", "op": "in", "value": "US"}]}, "targeting[0].value"),
    ({"forced": {"qa": "nope"}}, "forced.qa"),
    ({"layer_share": 0.5}, "layer_share"),
]


@pytest.mark.parametrize(("change", "field"), BAD_PAYLOADS)
def test_bad_payloads_are_422_naming_the_field_and_write_nothing(client, admin, services, change, field) -> None:
    payload = experiment_payload("exp-bad")
    payload.update(change)
    reply = client.post("/v1/experiments", json=payload, headers=admin)
    assert reply.status_code == 422, reply.get_json()
    error = reply.get_json()["error"]
    assert error["code"] == "validation_error" and error["details"]["field"] == field
    assert field.split("[")[0].split(".")[0] in error["message"]
    assert count_rows(services) == (0, 0, 0, 0)


def test_bad_patch_writes_nothing(client, admin, make_experiment) -> None:
    before = make_experiment("exp-1")
    reply = client.patch("/v1/experiments/exp-1", json={"name": "renamed", "coverage": 7}, headers=admin)
    assert reply.status_code == 422 and reply.get_json()["error"]["details"]["field"] == "coverage"
    assert client.get("/v1/experiments/exp-1", headers=admin).get_json() == before
    reply = client.patch("/v1/experiments/exp-1", json={"key": "other"}, headers=admin)
    assert reply.status_code == 422 and reply.get_json()["error"]["details"]["field"] == "key"


def test_malformed_json_non_json_and_oversized_bodies(client, admin, services) -> None:
    reply = client.post("/v1/experiments", data="{not json", headers={**admin, "Content-Type": "application/json"})
    assert reply.status_code == 400 and reply.get_json()["error"]["code"] == "bad_request"
    reply = client.post("/v1/experiments", data="key=x", headers=admin)
    assert reply.status_code == 400 and "JSON" in reply.get_json()["error"]["message"]
    reply = client.post("/v1/experiments", json=experiment_payload(hypothesis="x" * 100_000), headers=admin)
    assert reply.status_code == 413 and reply.get_json()["error"]["code"] == "payload_too_large"
    reply = client.post("/v1/experiments", json=[1, 2], headers=admin)
    assert reply.status_code == 422 and reply.get_json()["error"]["details"]["field"] == "body"
    assert count_rows(services) == (0, 0, 0, 0)


def test_unknown_routes_and_methods_are_json(client, admin) -> None:
    reply = client.get("/v1/nothing-here", headers=admin)
    assert reply.status_code == 404 and reply.is_json and reply.get_json()["error"]["code"] == "not_found"
    reply = client.delete("/v1/experiments", headers=admin)
    assert reply.status_code == 405 and reply.get_json()["error"]["code"] == "method_not_allowed"
    reply = client.get("/v1/experiments/missing", headers=admin)
    assert reply.status_code == 404 and "missing" in reply.get_json()["error"]["message"]


def test_huge_json_integers_are_422_not_500(client, admin) -> None:
    reply = client.post("/v1/experiments", json=experiment_payload(coverage=10**400), headers=admin)
    assert reply.status_code == 422 and reply.get_json()["error"]["details"]["field"] == "coverage"
