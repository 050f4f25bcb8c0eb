"""Database faults against a private PostgreSQL server that the tests stop, hang and bring back.

Every endpoint answers 503 with Retry-After within a second of the database failing (stopped,
or hung with SIGSTOP: connections accepted and never answered), /healthz answers within a second
whatever hangs, requests stuck on the hung server are freed, and service comes back within a
second of the database returning.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from abtest.app import create_app
from abtest.db import upgrade
from abtest.services.keys import create_key
from benchmarks._servers import PrivatePostgres, available
from tests.conftest import IN_CI, experiment_payload

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def private_pg():  # type: ignore[no-untyped-def]
    if not available()["postgres"]:
        if IN_CI:
            pytest.fail("PostgreSQL's server binaries are not installed")
        pytest.skip("PostgreSQL's server binaries are not installed")
    server = PrivatePostgres().start()
    upgrade(server.url)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def faulty(private_pg):  # type: ignore[no-untyped-def]
    if private_pg.proc is None:
        private_pg.start()
    app = create_app({"database_url": private_pg.url, "preload_engines": False, "guardrail_interval_s": 0.0,
                      "cache_ttl_s": 0.5, "db_statement_timeout_s": 5.0})
    services = app.extensions["abtest"]
    with services.db.transaction() as session:
        headers = {"Authorization": f"Bearer {create_key(session, 'faults-' + uuid.uuid4().hex[:6], 'admin')}"}
    key = "dbf-" + uuid.uuid4().hex[:8]
    client = app.test_client()
    assert client.post("/v1/experiments", json=experiment_payload(key), headers=headers).status_code == 201
    assert client.post(f"/v1/experiments/{key}/start", headers=headers).status_code == 200
    yield app, headers, key
    private_pg.resume()
    if private_pg.proc is None:
        private_pg.start()
    services.close()


def calls(key: str) -> dict[str, tuple[str, str, Any]]:
    event = {"events": [{"event_id": str(uuid.uuid4()), "unit_id": "u1", "name": "purchase"}]}
    return {
        "assign": ("post", "/v1/assign", {"experiment": key, "unit_id": "u1"}),
        "infer": ("post", "/v1/infer", {"experiment": key, "unit_id": "u1", "prompt": "x"}),
        "events": ("post", "/v1/events", event),
        "list": ("get", "/v1/experiments", None),
        "report": ("get", f"/v1/experiments/{key}/report", None),
    }


def call(app: Any, headers: dict[str, str], method: str, path: str, body: Any) -> tuple[int, Any, float]:
    started = time.monotonic()
    reply = getattr(app.test_client(), method)(path, json=body, headers=headers)
    return reply.status_code, reply, time.monotonic() - started


def until(predicate: Callable[[], bool], timeout: float, since: float | None = None) -> float:
    """Seconds from ``since`` (default now) until ``predicate()`` holds, polled every 20 ms;
    fails when it does not hold by ``timeout``, however long one call of it takes."""
    started = time.monotonic() if since is None else since
    while True:
        held = predicate()
        took = time.monotonic() - started
        assert took <= timeout, f"condition not reached within {timeout}s (took {took:.2f}s)"
        if held:
            return took
        time.sleep(0.02)


def assign_status(app: Any, headers: dict[str, str], key: str) -> int:
    return call(app, headers, "post", "/v1/assign", {"experiment": key, "unit_id": "probe"})[0]


def test_stopped_database_is_503_everywhere_then_recovers(faulty, private_pg) -> None:
    app, headers, key = faulty
    assert assign_status(app, headers, key) == 200
    stopping = time.monotonic()
    private_pg.stop()
    first_503 = until(lambda: assign_status(app, headers, key) == 503, timeout=1.0, since=stopping)
    for name, (method, path, body) in calls(key).items():
        status, reply, took = call(app, headers, method, path, body)
        assert status == 503 and reply.headers["Retry-After"] == "1", (name, status, reply.get_json())
        assert reply.get_json()["error"]["code"] == "service_unavailable" and took < 1.0, name
    status, reply, took = call(app, {}, "get", "/healthz", None)
    assert status == 503 and reply.get_json()["checks"]["database"].startswith("error") and took < 1.0
    private_pg.start()
    back = until(lambda: assign_status(app, headers, key) == 200, timeout=1.0)  # from the server being ready
    print(f"\ndatabase stopped: first 503 after {first_503:.2f}s; back {back:.2f}s after it returned")


def test_hung_database_frees_stuck_requests_and_recovers(faulty, private_pg) -> None:
    app, headers, key = faulty
    assert assign_status(app, headers, key) == 200
    stuck: list[tuple[int, float]] = []
    private_pg.pause()
    paused = time.monotonic()
    try:
        worker = threading.Thread(target=lambda: stuck.append(call(
            app, headers, "post", "/v1/assign", {"experiment": key, "unit_id": "in-flight"})[::2]))
        worker.start()  # a new unit: its exposure commit hangs on the stopped server
        status, reply, took = call(app, {}, "get", "/healthz", None)
        assert took < 1.0  # whatever hangs
        first_503 = until(lambda: assign_status(app, headers, key) == 503, timeout=1.2, since=paused)
        status, reply, took = call(app, {}, "get", "/healthz", None)
        assert status == 503 and took < 1.0 and reply.get_json()["checks"]["database"].startswith("error")
        worker.join(timeout=5)
        assert not worker.is_alive() and stuck[0][0] == 503  # freed, not left hanging
        freed_after = stuck[0][1]
    finally:
        private_pg.resume()
    back = until(lambda: assign_status(app, headers, key) == 200, timeout=1.0)
    assert freed_after < 1.5
    print(f"\ndatabase hung: first 503 after {first_503:.2f}s, in-flight request freed after {freed_after:.2f}s,"
          f" back {back:.2f}s after SIGCONT")
