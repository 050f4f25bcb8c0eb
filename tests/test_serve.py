"""`abtest serve` on an empty SQLite file: creates its schema and answers over real HTTP."""

from __future__ import annotations

import httpx

from abtest.testing import running_server
from tests.conftest import experiment_payload


def test_serve_creates_schema_and_serves(tmp_path) -> None:
    env = {"ABTEST_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh' / 'abtest.sqlite'}",
           "ABTEST_CHECKPOINT_DIR": str(tmp_path / "ckpt")}
    with running_server(env=env) as (base_url, admin_key):
        headers = {"Authorization": f"Bearer {admin_key}"}
        health = httpx.get(f"{base_url}/healthz").json()  # no checkpoints here: the engines failed to load
        assert health["checks"]["database"] == "ok" and health["status"] == "degraded"
        assert set(health["checks"]["engines"].values()) == {"failed"}
        reply = httpx.post(f"{base_url}/v1/experiments", json=experiment_payload("http-exp"), headers=headers)
        assert reply.status_code == 201
        httpx.post(f"{base_url}/v1/experiments/http-exp/start", headers=headers).raise_for_status()
        body = httpx.post(f"{base_url}/v1/assign", json={"experiment": "http-exp", "unit_id": "u1"},
                          headers=headers).json()
        assert body["in_experiment"] is True and body["variant"] in {"control", "treatment"}
        reply = httpx.post(f"{base_url}/v1/assign", content=b"{", headers={**headers, "Content-Type": "application/json"})
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "bad_request"
    assert (tmp_path / "fresh" / "abtest.sqlite").exists()
