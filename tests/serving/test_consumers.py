"""Celery mode with one engine's worker not started: /healthz names the queue nobody consumes,
/v1/infer answers 503 at once for that engine (an ``unavailable`` row, not the engine's error),
and the running worker logs JSON lines without prompts or generated text."""

from __future__ import annotations

import json

import pytest

from .harness import WorkerProcess, outcome_rows
from .test_faults import admin_headers
from .test_infer_e2e import make_app, start_experiment

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]


def test_an_engine_without_a_worker_is_named_and_refused_at_once(pg_url, redis_url, tiny_registry, tmp_path) -> None:
    env = {"ABTEST_BROKER_URL": redis_url, "ABTEST_ENGINE_REGISTRY": tiny_registry, "ABTEST_LOG_FORMAT": "json"}
    worker = WorkerProcess("v1-fp32", env, str(tmp_path / "v1.log"), concurrency=2).start()
    app = make_app(pg_url, tiny_registry, broker_url=redis_url, infer_timeout_s=30.0)
    headers = admin_headers(app)
    start_experiment(app, headers, variants=[  # no worker consumes engine.v2-int4
        {"key": "control", "engine": "v1-fp32", "weight": 0.5, "control": True},
        {"key": "treatment", "engine": "v2-int4", "weight": 0.5}])
    client = app.test_client()
    try:
        worker.wait_ready()
        health = client.get("/healthz")
        body = health.get_json()
        assert health.status_code == 200 and body["status"] == "degraded"
        assert body["checks"]["engines"]["v1-fp32"] == "ready" and body["checks"]["engines"]["v2-int4"] == "no_consumer"
        assert body["checks"]["engine_problems"]["v2-int4"] == "no worker consumes queue engine.v2-int4"
        seen = app.extensions["abtest"].inference.dispatcher.workers_seen()  # the console's engines page
        assert (seen["v1-fp32"], seen["v2-int4"]) == (1, 0)

        served: dict[str, dict] = {}
        refused: dict[str, tuple[int, dict, str | None]] = {}
        for i in range(40):
            reply = client.post("/v1/infer", json={"experiment": "e2e", "unit_id": f"u{i}", "max_new_tokens": 8,
                                                   "prompt": f"private prompt {i} zq"}, headers=headers)
            if reply.status_code == 200:
                served[f"u{i}"] = reply.get_json()
            else:
                refused[f"u{i}"] = (reply.status_code, reply.get_json(), reply.headers.get("Retry-After"))
        assert served and refused
        assert {b["engine"] for b in served.values()} == {"v1-fp32"}
        for status, error_body, retry_after in refused.values():
            error = error_body["error"]
            assert status == 503 and error["code"] == "no_consumer" and retry_after is not None
            assert error["message"] == "no worker consumes queue engine.v2-int4"
            assert error["details"] == {"engine": "v2-int4", "queue": "engine.v2-int4"}
        rows = {r.unit_id: r for r in outcome_rows(app.extensions["abtest"])}
        assert {(rows[u].status, rows[u].error_code, rows[u].engine) for u in refused} == {
            ("unavailable", "no_consumer", "v2-int4")}  # outside the engine's error rate
        assert {rows[u].status for u in served} == {"ok"}
    finally:
        worker.stop()
        app.extensions["abtest"].close()
    # every line of the worker is JSON, but the one Celery prints itself on SIGTERM
    lines = [line for line in worker.tail_all().splitlines()
             if line.strip() and line != "worker: Warm shutdown (MainProcess)"]
    records = [json.loads(line) for line in lines]
    text = "\n".join(lines)
    assert all(b["request_id"] in text for b in served.values())  # each task is logged ...
    assert "private prompt" not in text  # ... without its prompt
    assert not any(len(b["text"]) >= 8 and b["text"] in text for b in served.values())  # ... or its result
    assert any("succeeded in" in r["message"] for r in records)
