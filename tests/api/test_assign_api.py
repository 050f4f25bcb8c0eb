"""POST /v1/assign: the API agrees with the pure assignment and records exposures."""

from __future__ import annotations

from sqlalchemy import select

from abtest.evaluator import assign as pure_assign
from abtest.models import Exposure
from abtest.services.experiments import get_experiment, to_config


def exposures(services) -> dict[str, Exposure]:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        return {e.unit_id: e for e in session.scalars(select(Exposure))}


def test_assign_matches_pure_function_and_records_exposures(client, sdk, services, make_experiment) -> None:
    make_experiment("exp-1", start=True)
    with services.db.session() as session:
        config = to_config(get_experiment(session, "exp-1"))
    units = [f"user-{i}" for i in range(60)]
    for unit in units:
        reply = client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": unit}, headers=sdk)
        body = reply.get_json()
        expected = pure_assign(config, unit)
        assert body == {"experiment": "exp-1", "variant": expected.variant, "engine": expected.engine,
                        "in_experiment": True, "reason": "assigned"}
    client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": "user-0"}, headers=sdk)
    rows = exposures(services)
    assert set(rows) == set(units)
    assert rows["user-0"].count == 2 and rows["user-1"].count == 1
    assert rows["user-0"].last_seen >= rows["user-0"].first_seen
    assert {r.phase for r in rows.values()} == {1}


def test_draft_experiment_serves_control_and_records_nothing(client, sdk, services, make_experiment) -> None:
    make_experiment("exp-1")
    body = client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": "u"}, headers=sdk).get_json()
    assert body == {"experiment": "exp-1", "variant": "control", "engine": "v1-fp32",
                    "in_experiment": False, "reason": "not_running"}
    assert exposures(services) == {}


def test_targeting_attributes_flow_through(client, sdk, make_experiment) -> None:
    make_experiment("exp-1", start=True, targeting=[{"attribute": "plan", "op": "in", "value": ["pro"]}])
    free = client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": "u", "attributes": {"plan": "free"}},
                       headers=sdk).get_json()
    assert free["reason"] == "targeting" and free["in_experiment"] is False
    pro = client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": "u", "attributes": {"plan": "pro"}},
                      headers=sdk).get_json()
    assert pro["in_experiment"] is True


def test_assign_bad_input(client, sdk, make_experiment) -> None:
    make_experiment("exp-1", start=True)
    cases = [({"unit_id": "u"}, "experiment"), ({"experiment": "exp-1"}, "unit_id"),
             ({"experiment": "exp-1", "unit_id": 5}, "unit_id"),
             ({"experiment": "exp-1", "unit_id": "u", "attributes": []}, "attributes"),
             ({"experiment": "exp-1", "unit_id": "u", "extra": 1}, "extra")]
    for body, field in cases:
        reply = client.post("/v1/assign", json=body, headers=sdk)
        assert reply.status_code == 422 and reply.get_json()["error"]["details"]["field"] == field
    reply = client.post("/v1/assign", json={"experiment": "nope", "unit_id": "u"}, headers=sdk)
    assert reply.status_code == 404 and reply.get_json()["error"]["code"] == "not_found"


def test_new_phase_rerandomizes_and_exposures_are_per_phase(client, admin, sdk, services, make_experiment) -> None:
    make_experiment("exp-1", start=True)
    for i in range(30):
        client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": f"u{i}"}, headers=sdk)
    variants = [{"key": "control", "engine": "v1-fp32", "weight": 0.3, "control": True},
                {"key": "treatment", "engine": "v2-int4", "weight": 0.7}]
    client.patch("/v1/experiments/exp-1", json={"variants": variants}, headers=admin)
    for i in range(30):
        client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": f"u{i}"}, headers=sdk)
    with services.db.session() as session:
        phases = [e.phase for e in session.scalars(select(Exposure))]
    assert phases.count(1) == 30 and phases.count(2) == 30
