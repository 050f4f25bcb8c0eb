"""Live servers for the OpenAI-compatible endpoints: ``abtest serve`` in a child process, in
embedded mode (engines in the server, SQLite) and in Celery mode (real ``abtest worker``
processes on the machine's Redis, PostgreSQL), each with a running experiment ``chat``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from abtest.models import RequestLog
from abtest.services.keys import create_key
from abtest.db import Database
from abtest.testing import running_server
from tests.conftest import clear_tables, experiment_payload
from tests.serving.harness import WorkerProcess

pytest.importorskip("torch")
openai = pytest.importorskip("openai")

EXPERIMENT = "chat"
AUTH_FAIL_LIMIT = 3  # failed authentications per address before 429 (the retry test uses it)
AUTH_FAIL_WINDOW_S = 1.0


@dataclass
class Live:
    mode: str
    base_url: str
    admin_key: str
    sdk_key: str
    db_url: str
    redis_url: str | None = None  # Celery mode's broker and result backend

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def row(self, request_id: str, timeout: float = 30.0) -> RequestLog:
        """The outcome row of ``request_id`` (waits for it: a stream's row is written as it ends)."""
        engine = create_engine(self.db_url)
        try:
            deadline = time.monotonic() + timeout
            while True:
                with engine.connect() as conn:
                    found = conn.execute(select(RequestLog).where(RequestLog.request_id == request_id)).first()
                if found is not None or time.monotonic() > deadline:
                    return found
                time.sleep(0.05)
        finally:
            engine.dispose()

    def rows(self) -> list[Any]:
        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return list(conn.execute(select(RequestLog)))
        finally:
            engine.dispose()


def _keys(db_url: str) -> str:
    db = Database(db_url)
    try:
        with db.transaction() as session:
            return create_key(session, "openai-sdk", "sdk")
    finally:
        db.dispose()


@contextlib.contextmanager
def _serve(mode: str, db_url: str, env: dict[str, str]) -> Iterator[Live]:
    env = {**env, "ABTEST_DATABASE_URL": db_url, "ABTEST_INFER_TIMEOUT_S": "60", "ABTEST_CACHE_TTL_S": "0",
           "ABTEST_AUTH_FAIL_LIMIT": str(AUTH_FAIL_LIMIT), "ABTEST_AUTH_FAIL_WINDOW_S": str(AUTH_FAIL_WINDOW_S),
           "ABTEST_GUARDRAIL_INTERVAL_S": "0"}
    with running_server(env=env) as (base_url, admin_key):
        headers = {"Authorization": f"Bearer {admin_key}"}
        httpx.post(f"{base_url}/v1/experiments", json=experiment_payload(EXPERIMENT), headers=headers,
                   timeout=30).raise_for_status()
        httpx.post(f"{base_url}/v1/experiments/{EXPERIMENT}/start", headers=headers, timeout=30).raise_for_status()
        yield Live(mode, base_url, admin_key, _keys(db_url), db_url, env.get("ABTEST_BROKER_URL"))


@pytest.fixture(scope="module", params=["embedded", "celery"])
def live(request, tiny_registry, tmp_path_factory) -> Iterator[Live]:  # type: ignore[no-untyped-def]
    if request.param == "embedded":
        db_url = f"sqlite:///{tmp_path_factory.mktemp('openai-db') / 'server.sqlite'}"
        with _serve("embedded", db_url, {"ABTEST_ENGINE_REGISTRY": tiny_registry}) as server:
            yield server
        return
    redis_url = request.getfixturevalue("redis_url")
    db_url = request.getfixturevalue("pg_url")
    clear_tables(db_url)
    logs = tmp_path_factory.mktemp("openai-worker-logs")
    env = {"ABTEST_BROKER_URL": redis_url, "ABTEST_ENGINE_REGISTRY": tiny_registry}
    workers = [WorkerProcess(name, env, str(logs / f"{name}.log")).start() for name in ("v1-fp32", "v2-int4")]
    try:
        for w in workers:
            w.wait_ready()
        with _serve("celery", db_url, env) as server:
            yield server
    finally:
        for w in workers:
            w.stop()
