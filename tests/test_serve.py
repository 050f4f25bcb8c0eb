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
        assert health["checks"]["engines"] == {"v1-fp32": "failing", "v2-int4": "failing",
                                               "v2-fp32": "idle"}  # a quality reference loads on first use
        reply = httpx.post(f"{base_url}/v1/experiments", json=experiment_payload("http-exp"), headers=headers)
        assert reply.status_code == 201
        httpx.post(f"{base_url}/v1/experiments/http-exp/start", headers=headers).raise_for_status()
        body = httpx.post(f"{base_url}/v1/assign", json={"experiment": "http-exp", "unit_id": "u1"},
                          headers=headers).json()
        assert body["in_experiment"] is True and body["variant"] in {"control", "treatment"}
        reply = httpx.post(f"{base_url}/v1/assign", content=b"{", headers={**headers, "Content-Type": "application/json"})
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "bad_request"
    assert (tmp_path / "fresh" / "abtest.sqlite").exists()


def _serve(env: dict[str, str], log_path, port: int):  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "abtest", "serve", "--port", str(port)],
                                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)


def test_json_mode_makes_every_line_json_gunicorns_included(tmp_path) -> None:
    import json

    from abtest.testing import free_port, wait_healthy

    env = {"ABTEST_DATABASE_URL": f"sqlite:///{tmp_path / 'abtest.sqlite'}", "ABTEST_CHECKPOINT_DIR": str(tmp_path),
           "ABTEST_LOG_FORMAT": "json"}
    port = free_port()
    proc = _serve(env, tmp_path / "serve.log", port)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/experiments").status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lines = [line for line in (tmp_path / "serve.log").read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # fails on any plain-text line
    loggers = {r["logger"] for r in records}
    assert {"gunicorn.error", "gunicorn.access"} <= loggers
    assert any("Listening at" in r["message"] for r in records)
    assert any("/v1/experiments" in r["message"] and r["logger"] == "gunicorn.access" for r in records)


def test_serve_stops_at_once_naming_a_missing_registry_or_a_bad_log_format(tmp_path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "nowhere" / "engines.json"
    for env, expected in (({"ABTEST_ENGINE_REGISTRY": str(missing)}, f"engine registry {missing} does not exist"),
                          ({"ABTEST_LOG_FORMAT": "yaml"}, "ABTEST_LOG_FORMAT: 'yaml' is not one of text, json")):
        import os

        done = subprocess.run([sys.executable, "-m", "abtest", "serve", "--port", "1"], capture_output=True,
                              text=True, timeout=60, env={**os.environ, **env})
        assert done.returncode != 0 and done.stdout == ""
        assert done.stderr.strip().splitlines() == [f"Error: abtest serve: {expected}"
                                                    if "LOG" in expected else
                                                    f"Error: abtest serve: ABTEST_ENGINE_REGISTRY: {expected}"]
