"""/v1/layers: holdout settings, their validation, and holdout exposures from the server and
from a locally evaluating client."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from abtest.client import Client
from abtest.evaluator import bucket
from abtest.models import AuditEntry, Exposure, HoldoutExposure


def _units(layer: str, share: float, inside: bool, n: int) -> list[str]:
    found, i = [], 0
    while len(found) < n:
        unit = f"unit-{i}"
        if (bucket(f"holdout:{layer}", unit) < share) == inside:
            found.append(unit)
        i += 1
    return found


def _count(services: Any, table: Any) -> int:
    with services.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(table)))


def test_put_and_get_a_layer(client, admin, make_experiment) -> None:
    make_experiment("a", layer="home", layer_share=0.5)
    assert client.get("/v1/layers/home", headers=admin).get_json()["holdout"] == 0.0  # named, no settings
    reply = client.put("/v1/layers/home", json={"holdout": 0.05}, headers=admin)
    assert reply.status_code == 200, reply.get_json()
    body = reply.get_json()
    assert body["name"] == "home" and body["holdout"] == 0.05
    assert [e["key"] for e in body["experiments"]] == ["a"]
    assert client.get("/v1/layers/home", headers=admin).get_json()["holdout"] == 0.05
    # a layer may be set up before any experiment names it
    assert client.put("/v1/layers/search", json={"holdout": 0.5}, headers=admin).status_code == 200
    listed = client.get("/v1/layers", headers=admin).get_json()["layers"]
    assert [(x["name"], x["holdout"]) for x in listed] == [("home", 0.05), ("search", 0.5)]


@pytest.mark.parametrize("body, field", [
    ({"holdout": 0.6}, "holdout"), ({"holdout": -0.01}, "holdout"), ({"holdout": "0.1"}, "holdout"),
    ({"holdout": None}, "holdout"), ({}, "holdout"), ({"holdout": 0.1, "share": 1}, "share"),
])
def test_bad_holdouts_are_422_naming_the_field(client, admin, services, body, field) -> None:  # type: ignore[no-untyped-def]
    reply = client.put("/v1/layers/home", json=body, headers=admin)
    assert reply.status_code == 422
    assert reply.get_json()["error"]["details"]["field"] == field
    assert client.get("/v1/layers/home", headers=admin).status_code == 404  # nothing half-written


@pytest.mark.parametrize("name", ["Home", "with space", "x" * 101, "ünïcode"])
def test_a_layer_name_follows_the_experiment_layer_rules(client, admin, name) -> None:
    for reply in (client.put(f"/v1/layers/{name}", json={"holdout": 0.1}, headers=admin),
                  client.get(f"/v1/layers/{name}", headers=admin)):
        assert reply.status_code == 422
        assert reply.get_json()["error"]["details"]["field"] == "layer"
    # what experiments refuse as a layer name, layers refuse too
    refused = client.post("/v1/experiments", headers=admin, json={
        "key": "x", "name": "x", "layer": name, "variants": [
            {"key": "control", "engine": "v1-fp32", "weight": 0.5}, {"key": "t", "engine": "v2-int4", "weight": 0.5}]})
    assert refused.status_code == 422


def test_unknown_layers_are_404(client, admin) -> None:
    for path in ("/v1/layers/nowhere", "/v1/layers/nowhere/report"):
        reply = client.get(path, headers=admin)
        assert reply.status_code == 404, path


def test_the_share_cannot_change_while_an_experiment_of_the_layer_runs(client, admin, make_experiment) -> None:
    assert client.put("/v1/layers/home", json={"holdout": 0.1}, headers=admin).status_code == 200
    make_experiment("a", layer="home", layer_share=0.5, start=True)
    make_experiment("b", layer="home", layer_share=0.5)  # a draft does not block it
    reply = client.put("/v1/layers/home", json={"holdout": 0.2}, headers=admin)
    assert reply.status_code == 409
    assert reply.get_json()["error"]["details"]["experiments"] == ["a"]
    assert client.put("/v1/layers/home", json={"holdout": 0.1}, headers=admin).status_code == 200  # no change
    assert client.post("/v1/experiments/a/pause", headers=admin).status_code == 200
    assert client.put("/v1/layers/home", json={"holdout": 0.2}, headers=admin).status_code == 409  # paused too
    assert client.post("/v1/experiments/a/stop", headers=admin).status_code == 200
    assert client.put("/v1/layers/home", json={"holdout": 0.2}, headers=admin).get_json()["holdout"] == 0.2


def test_the_server_answers_holdout_units_with_control_and_records_holdout_exposures(
        client, admin, sdk, services, make_experiment) -> None:
    assert client.put("/v1/layers/home", json={"holdout": 0.3}, headers=admin).status_code == 200
    make_experiment("a", layer="home", layer_share=1.0, start=True)
    held, outside = _units("home", 0.3, True, 20), _units("home", 0.3, False, 20)
    for unit in held + held[:5]:  # seen twice: one row per unit, counted twice
        body = client.post("/v1/assign", json={"experiment": "a", "unit_id": unit}, headers=sdk).get_json()
        assert body == {"experiment": "a", "variant": "control", "engine": "v1-fp32", "in_experiment": False,
                        "reason": "holdout"}
    for unit in outside:
        assert client.post("/v1/assign", json={"experiment": "a", "unit_id": unit},
                           headers=sdk).get_json()["reason"] == "assigned"
    with services.db.session() as session:
        rows = {r.unit_id: r for r in session.scalars(select(HoldoutExposure))}
        enrolled = set(session.scalars(select(Exposure.unit_id)))
    assert set(rows) == set(held) and enrolled == set(outside)
    assert {rows[u].count for u in held[:5]} == {2} and {r.layer for r in rows.values()} == {"home"}


def test_a_local_client_sends_holdout_exposures_and_the_server_checks_them(
        app, client, admin, sdk, services, make_experiment) -> None:
    assert client.put("/v1/layers/home", json={"holdout": 0.3}, headers=admin).status_code == 200
    make_experiment("a", layer="home", layer_share=1.0, start=True)
    held, outside = _units("home", 0.3, True, 10), _units("home", 0.3, False, 10)
    with Client("http://testserver", sdk["Authorization"].split()[1], transport=httpx.WSGITransport(app=app),
                evaluation="local", refresh_interval=3600) as local:
        for unit in held:
            result = local.assign("a", unit)
            assert (result.variant, result.in_experiment, result.reason) == ("control", False, "holdout")
        for unit in outside:
            assert local.assign("a", unit).reason == "assigned"
        local.flush()
    with services.db.session() as session:
        assert set(session.scalars(select(HoldoutExposure.unit_id))) == set(held)
        assert set(session.scalars(select(Exposure.unit_id))) == set(outside)
    # a holdout exposure for a unit outside the holdout, or naming a treatment, is rejected alone
    items = [{"exposure_id": "x-1", "experiment": "a", "phase": 1, "unit_id": outside[0], "variant": "control",
              "first_seen": 1.7e9, "last_seen": 1.7e9, "holdout": True},
             {"exposure_id": "x-2", "experiment": "a", "phase": 1, "unit_id": held[0], "variant": "treatment",
              "first_seen": 1.7e9, "last_seen": 1.7e9, "holdout": True},
             {"exposure_id": "x-3", "experiment": "a", "phase": 1, "unit_id": held[0], "variant": "control",
              "first_seen": 1.7e9, "last_seen": 1.7e9, "holdout": "yes"}]
    reply = client.post("/v1/exposures", json={"exposures": items}, headers=sdk).get_json()
    errors = [r["error"] for r in sorted(reply["rejected"], key=lambda r: r["index"])]
    assert reply["accepted"] == 0, reply
    assert [e.split(":")[0] for e in errors] == ["holdout", "variant", "holdout"], errors
    assert _count(services, HoldoutExposure) == len(held)


def test_a_holdout_change_changes_the_definitions_version(client, admin, sdk, make_experiment) -> None:
    make_experiment("a", layer="home", layer_share=0.5)
    before = client.get("/v1/sdk/definitions", headers=sdk).get_json()
    assert client.put("/v1/layers/home", json={"holdout": 0.1}, headers=admin).status_code == 200
    after = client.get("/v1/sdk/definitions", headers=sdk).get_json()
    assert after["version"] != before["version"] and after["layers"] == {"home": {"holdout": 0.1}}
    assert after["experiments"] == before["experiments"]


def test_the_layer_change_is_audited_on_each_of_its_experiments(client, admin, services, make_experiment) -> None:
    make_experiment("a", layer="home", layer_share=0.5)
    make_experiment("b", layer="home", layer_share=0.5)
    assert client.put("/v1/layers/home", json={"holdout": 0.1}, headers=admin).status_code == 200
    with services.db.session() as session:
        entries = session.execute(select(AuditEntry.experiment_id, AuditEntry.changes)
                                  .where(AuditEntry.action == "layer_holdout")).all()
    assert len(entries) == 2
    assert all(c == {"layer": "home", "holdout": {"from": 0.0, "to": 0.1}} for _, c in entries)


@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_holdout_change_waits_for_a_start_in_progress_and_then_refuses(app, client, admin, services,
                                                                         make_experiment) -> None:
    import threading
    import time

    from abtest.models import Experiment

    make_experiment("a", layer="home", layer_share=0.5)
    replies: list[int] = []
    with services.db.transaction() as session:  # a start under way: its row is locked, not yet committed
        exp = session.scalars(select(Experiment).where(Experiment.key == "a").with_for_update()).one()
        exp.status = "running"
        session.flush()
        worker = threading.Thread(target=lambda: replies.append(
            app.test_client().put("/v1/layers/home", json={"holdout": 0.1}, headers=admin).status_code))
        worker.start()
        time.sleep(1.0)  # give the change time to reach the locked row
        assert replies == []  # it waits for the start's commit
    worker.join(timeout=60)
    assert replies == [409]
    assert client.get("/v1/layers/home", headers=admin).get_json()["holdout"] == 0.0
