"""Readiness, admission control and a hung broker: one failing part never stalls the others.

Real engines (tiny checkpoints), real Celery worker processes, real Redis and SQL. The engine
load is held back with an event in the readiness test so that "still loading" lasts long enough
to look at; nothing else is replaced.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from abtest.evaluator import assign as pure_assign
from abtest.services.experiments import get_experiment, to_config
from abtest.services.keys import create_key
from benchmarks._servers import PrivateRedis

from tests.conftest import experiment_payload

from .harness import WorkerProcess, outcome_rows
from .test_infer_e2e import make_app, start_experiment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def healthy_registry(tiny_registry: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny registry without its deliberately broken engine."""
    entries = [e for e in json.loads(Path(tiny_registry).read_text())["engines"] if e["name"] != "broken"]
    path = tmp_path_factory.mktemp("healthy") / "registry.json"
    path.write_text(json.dumps({"engines": entries}))
    return str(path)


def admin_headers(app: Any) -> dict[str, str]:
    with app.extensions["abtest"].db.transaction() as session:
        return {"Authorization": f"Bearer {create_key(session, 'iso-' + uuid.uuid4().hex[:6], 'admin')}"}


def units_by_engine(app: Any, n: int = 400) -> dict[str, list[str]]:
    with app.extensions["abtest"].db.session() as session:
        config = to_config(get_experiment(session, "e2e"))
    out: dict[str, list[str]] = {}
    for i in range(n):
        unit = f"u{i}"
        out.setdefault(pure_assign(config, unit).engine, []).append(unit)
    return out


def timed_post(app: Any, path: str, body: Any, headers: dict[str, str]) -> tuple[int, dict, float]:
    started = time.monotonic()
    reply = app.test_client().post(path, json=body, headers=headers)
    return reply.status_code, reply.get_json(), time.monotonic() - started


def test_engines_load_at_start_and_traffic_waits_for_readiness(sqlite_url, healthy_registry, monkeypatch) -> None:
    import engines.runtime

    release = threading.Event()
    real_load = engines.runtime.load_engine

    def held_load(spec):  # type: ignore[no-untyped-def]
        release.wait(60)
        return real_load(spec)

    monkeypatch.setattr(engines.runtime, "load_engine", held_load)
    app = make_app(sqlite_url, healthy_registry, preload_engines=True)
    try:
        client = app.test_client()
        health = client.get("/healthz")
        engines = health.get_json()["checks"]["engines"]
        assert health.status_code == 503 and {engines["v1-fp32"], engines["v2-int4"]} == {"loading"}
        assert engines["v2-fp32"] == "idle"  # a quality reference is not preloaded: it loads on first use
        headers = admin_headers(app)
        start_experiment(app, headers)
        status, body, took = timed_post(app, "/v1/infer", {"experiment": "e2e", "unit_id": "early", "prompt": "x"},
                                        headers)
        assert status == 503 and body["error"]["details"]["engine_code"] == "engine_starting" and took < 1.0
        release.set()
        deadline = time.monotonic() + 60
        while client.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, body, _ = timed_post(app, "/v1/infer", {"experiment": "e2e", "unit_id": "later", "prompt": "x",
                                                        "max_new_tokens": 2}, headers)
        assert status == 200
        rows = {r.unit_id: r for r in outcome_rows(app.extensions["abtest"])}
        assert rows["early"].status == "unavailable" and rows["later"].status == "ok"
        report = client.get("/v1/experiments/e2e/report", headers=headers).get_json()
        counts = {v["variant"]: (v["requests"], v["unavailable"]) for v in report["variants"]}
        assert counts[rows["early"].variant][1] == 1 and sum(u for _, u in counts.values()) == 1  # counted apart ...
        assert sum(n for n, _ in counts.values()) == 2
        error_rate = next(m for m in report["metrics"] if m["name"] == "error_rate")
        arms = error_rate["variants"].values()  # ... and not as an error: only "later" is in the denominator
        assert sum(arm["requests"] for arm in arms) == 1 and all(arm["estimate"] in (0, None) for arm in arms)
    finally:
        release.set()
        app.extensions["abtest"].close()


@pytest.fixture
def v1_worker(redis_url, healthy_registry, tmp_path):  # type: ignore[no-untyped-def]
    env = {"ABTEST_BROKER_URL": redis_url, "ABTEST_ENGINE_REGISTRY": healthy_registry}
    worker = WorkerProcess("v1-fp32", env, str(tmp_path / "v1.log"), concurrency=8).start()
    worker.wait_ready()
    yield worker
    worker.stop()


def hung_worker(engine: str, env: dict[str, str], log: str) -> WorkerProcess:
    """A worker that started, announced itself as its queue's consumer, then hung (SIGSTOP): the
    API still counts it as a consumer (``consumer_stale_s`` large), so calls wait on it."""
    worker = WorkerProcess(engine, env, log, concurrency=1).start()
    worker.wait_ready()
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    return worker


def resume_and_stop(worker: WorkerProcess) -> None:
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGCONT)
    worker.stop()


@pytest.mark.redis
def test_a_dead_engine_takes_no_threads_from_the_rest(pg_url, redis_url, healthy_registry, v1_worker,
                                                      tmp_path) -> None:
    import redis as redis_lib

    redis_lib.Redis.from_url(redis_url).delete("engine.v2-int4")
    env = {"ABTEST_BROKER_URL": redis_url, "ABTEST_ENGINE_REGISTRY": healthy_registry}
    v2 = hung_worker("v2-int4", env, str(tmp_path / "v2-hung.log"))  # the dead engine
    timeout = 4.0  # far above what an answer at once takes, even on a loaded 2-core machine
    app = make_app(pg_url, healthy_registry, broker_url=redis_url, infer_timeout_s=timeout,
                   max_inflight_per_engine=4, consumer_stale_s=600.0)
    headers = admin_headers(app)
    start_experiment(app, headers)
    units = units_by_engine(app)
    dead = [{"experiment": "e2e", "unit_id": u, "prompt": "x"} for u in units["v2-int4"][:20]]
    try:
        with ThreadPoolExecutor(24) as pool:
            stuck = [pool.submit(timed_post, app, "/v1/infer", body, headers) for body in dead]
            time.sleep(0.3)  # the dead engine's calls are all waiting or refused now
            healthy = timed_post(app, "/v1/infer", {"experiment": "e2e", "unit_id": units["v1-fp32"][0],
                                                    "prompt": "x", "max_new_tokens": 2}, headers)
            assign = timed_post(app, "/v1/assign", {"experiment": "e2e", "unit_id": "someone"}, headers)
            events = timed_post(app, "/v1/events", {"events": [{"event_id": str(uuid.uuid4()), "unit_id": "someone",
                                                               "name": "purchase"}]}, headers)
            started = time.monotonic()
            health = app.test_client().get("/healthz")
            health_took = time.monotonic() - started
            results = [f.result() for f in stuck]
        assert healthy[0] == 200 and assign[0] == 200 and events[0] == 202 and health.status_code == 200
        assert max(healthy[2], assign[2], events[2], health_took) < timeout / 2  # nobody waited on the dead engine
        statuses = sorted(r[0] for r in results)
        assert statuses == [429] * 16 + [504] * 4
        assert max(r[2] for r in results if r[0] == 429) < timeout / 2  # refused at once, not after the timeout
        assert max(r[2] for r in results) < timeout + 1.0  # nobody waits past the timeout + 1 s
        rows = outcome_rows(app.extensions["abtest"])
        assert sorted(r.status for r in rows if r.engine == "v2-int4") == ["timeout"] * 4  # 429s wrote nothing
        assert all(r.engine_ms is not None and r.latency_ms >= r.engine_ms for r in rows if r.status == "ok")
    finally:
        redis_lib.Redis.from_url(redis_url).delete("engine.v2-int4")
        resume_and_stop(v2)
        app.extensions["abtest"].close()


@pytest.mark.redis
@pytest.mark.postgres
def test_hung_broker_answers_503_within_a_second(pg_url, healthy_registry, tmp_path) -> None:
    broker = PrivateRedis().start()
    env = {"ABTEST_BROKER_URL": broker.url, "ABTEST_ENGINE_REGISTRY": healthy_registry}
    worker = WorkerProcess("v1-fp32", env, str(tmp_path / "w.log"), concurrency=4).start()
    v2 = hung_worker("v2-int4", env, str(tmp_path / "v2-hung.log"))  # takes nothing: calls wait on the broker
    app = make_app(pg_url, healthy_registry, broker_url=broker.url, infer_timeout_s=20.0, consumer_stale_s=600.0,
                   probe_stale_s=0.75)
    headers = admin_headers(app)
    start_experiment(app, headers, variants=[
        {"key": "control", "engine": "v1-fp32", "weight": 1.0, "control": True},
        {"key": "treatment", "engine": "v2-int4", "weight": 0.0}])
    try:
        worker.wait_ready()
        assert timed_post(app, "/v1/infer", {"experiment": "e2e", "unit_id": "warm", "prompt": "x",
                                             "max_new_tokens": 2}, headers)[0] == 200
        dead = experiment_payload("dead", variants=[  # engine.v2-int4's only worker is hung
            {"key": "control", "engine": "v2-int4", "weight": 1.0, "control": True},
            {"key": "treatment", "engine": "v1-fp32", "weight": 0.0}])
        client = app.test_client()
        assert client.post("/v1/experiments", json=dead, headers=headers).status_code == 201
        assert client.post("/v1/experiments/dead/start", headers=headers).status_code == 200
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(timed_post, app, "/v1/infer", {"experiment": "dead", "unit_id": "long",
                                                                 "prompt": "x"}, headers)
            time.sleep(0.5)  # queued, its caller waiting for a result through the broker
            broker.pause()
            paused = time.monotonic()
            status, body, _ = waiting.result(timeout=10)
            waited = time.monotonic() - paused
        assert status == 503 and waited < 1.5 and body["error"]["details"]["engine_code"] == "broker_unavailable"
        status, body, took = timed_post(app, "/v1/infer", {"experiment": "e2e", "unit_id": "new", "prompt": "x"},
                                        headers)
        assert status == 503 and took < 1.0
        started = time.monotonic()
        health = app.test_client().get("/healthz")
        assert health.status_code == 503 and health.get_json()["checks"]["broker"].startswith("error")
        assert time.monotonic() - started < 1.0
        broker.resume()
        resumed = time.monotonic()
        while timed_post(app, "/v1/infer", {"experiment": "e2e", "unit_id": "back", "prompt": "x",
                                            "max_new_tokens": 2}, headers)[0] != 200:
            assert time.monotonic() - resumed < 10
            time.sleep(0.1)
        rows = {r.unit_id: r for r in outcome_rows(app.extensions["abtest"])}
        assert rows["long"].status == "unavailable" and rows["new"].status == "unavailable"
        print(f"\nhung broker: in-flight call answered 503 after {waited:.2f}s; "
              f"served again {time.monotonic() - resumed:.2f}s after SIGCONT")
    finally:
        broker.resume()
        worker.stop()
        resume_and_stop(v2)
        app.extensions["abtest"].close()
        broker.close()

