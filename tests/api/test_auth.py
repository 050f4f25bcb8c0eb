"""Authentication and scopes: 401 without a valid key, 403 with the wrong scope."""

from __future__ import annotations

from sqlalchemy import select

from abtest.models import ApiKey
from abtest.services.keys import revoke_key
from tests.conftest import experiment_payload


def test_missing_and_bad_keys_are_401(client) -> None:
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer abt_wrong"}):
        reply = client.get("/v1/experiments", headers=headers)
        assert reply.status_code == 401 and reply.get_json()["error"]["code"] == "unauthorized"


def test_sdk_scope_cannot_configure_but_can_assign(client, sdk, admin, make_experiment) -> None:
    reply = client.post("/v1/experiments", json=experiment_payload(), headers=sdk)
    assert reply.status_code == 403 and reply.get_json()["error"]["code"] == "forbidden"
    assert client.get("/v1/experiments", headers=sdk).status_code == 403
    make_experiment("exp-1", start=True)
    assert client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": "u1"}, headers=sdk).status_code == 200
    assert client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": "u1"}, headers=admin).status_code == 200


def test_keys_are_stored_hashed_and_revocation_works(client, admin, services) -> None:
    key = admin["Authorization"].split()[1]
    with services.db.session() as session:
        stored = [row.key_hash for row in session.scalars(select(ApiKey))]
    assert key not in stored and len(stored[0]) == 64
    with services.db.transaction() as session:
        revoke_key(session, "test-admin")
    assert client.get("/v1/experiments", headers=admin).status_code == 401


def test_healthz_needs_no_key(client) -> None:
    reply = client.get("/healthz")
    assert reply.status_code == 200
    assert reply.get_json()["checks"]["database"] == "ok"


def test_a_key_without_bearer_is_told_the_header_shape(client, admin) -> None:
    key = admin["Authorization"].split()[1]
    reply = client.get("/v1/experiments", headers={"Authorization": key})
    assert reply.status_code == 401
    assert reply.get_json()["error"]["message"] == "malformed Authorization header: it must be 'Bearer <key>'"
    reply = client.get("/v1/experiments")
    assert reply.status_code == 401 and reply.get_json()["error"]["message"].startswith("missing API key")


def test_viewer_scope_reads_but_changes_nothing(client, services, make_experiment) -> None:
    from abtest.services.keys import create_key

    make_experiment("exp-1", start=True)
    with services.db.transaction() as session:
        viewer = {"Authorization": f"Bearer {create_key(session, 'look', 'viewer')}"}
    for path in ("/v1/experiments", "/v1/experiments/exp-1", "/v1/experiments/exp-1/audit",
                 "/v1/experiments/exp-1/report", "/v1/experiments/exp-1/report?format=html"):
        assert client.get(path, headers=viewer).status_code == 200, path
    refused = [
        client.post("/v1/experiments", json=experiment_payload("exp-2"), headers=viewer),
        client.patch("/v1/experiments/exp-1", json={"coverage": 0.5}, headers=viewer),
        client.post("/v1/experiments/exp-1/pause", headers=viewer),
        client.get("/v1/experiments/exp-1/export?table=exposures", headers=viewer),
        client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": "u1"}, headers=viewer),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert client.get("/v1/experiments/exp-2", headers=viewer).status_code == 404  # nothing was created
    assert client.get("/v1/experiments/exp-1", headers=viewer).get_json()["status"] == "running"
