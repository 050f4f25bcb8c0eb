"""Shared fixtures: real SQLite and PostgreSQL databases, the app, API keys, factories.

PostgreSQL tests run against a fresh database created for this session on the server at
ABTEST_TEST_POSTGRES_URL (default: the local server, trust auth). Under CI (CI=true) an
unreachable PostgreSQL or Redis fails the tests that need it instead of skipping them.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from abtest.app import create_app
from abtest.db import upgrade
from abtest.models import Base
from abtest.services.keys import create_key
from engines import tune_openmp

tune_openmp()  # as the abtest and engines commands do, before a test imports torch

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_SERVER_URL = os.environ.get("ABTEST_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ABTEST_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is unreachable: {exc}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped at the end."""
    name = f"abtest_test_{uuid.uuid4().hex[:10]}"
    try:
        server = create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT")
        with server.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any connection failure
        unavailable("PostgreSQL", exc)
    url = PG_SERVER_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    with server.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    server.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'abtest.sqlite'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgres" else "sqlite_url")


def clear_tables(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture
def app(db_url: str, tmp_path) -> Iterator[Any]:
    clear_tables(db_url)
    application = create_app({
        "database_url": db_url,
        "cache_ttl_s": 0.0,
        "preload_engines": False,  # no checkpoints here; engines load on first use
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "max_body_bytes": 65_536,
        "guardrail_interval_s": 0.0,  # tests run guardrail rounds explicitly
        "schedule_interval_s": 0.0,  # and schedule rounds, with a fake clock
        # a loaded 2-core CI machine can stall a healthy database past the 0.75 s default; the
        # outage tests (tests/serving, benchmarks.faults) keep the default
        "probe_stale_s": 5.0,
        "secret_key_file": str(tmp_path / "secret_key"),
    })
    yield application
    application.extensions["abtest"].close()


@pytest.fixture
def services(app: Any) -> Any:
    return app.extensions["abtest"]


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def _key(services: Any, scope: str) -> dict[str, str]:
    with services.db.transaction() as session:
        key = create_key(session, f"test-{scope}", scope)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def admin(services: Any) -> dict[str, str]:
    """Headers of an admin-scoped key."""
    return _key(services, "admin")


@pytest.fixture
def sdk(services: Any) -> dict[str, str]:
    """Headers of an sdk-scoped key."""
    return _key(services, "sdk")


def experiment_payload(key: str = "exp-1", **overrides: Any) -> dict[str, Any]:
    """A valid experiment payload (factory); override any field."""
    payload: dict[str, Any] = {
        "key": key,
        "name": "V2 INT4 vs V1 FP32",
        "hypothesis": "V2 is faster and as good",
        "owner": "team-llm",
        "variants": [
            {"key": "control", "engine": "v1-fp32", "weight": 0.5, "control": True},
            {"key": "treatment", "engine": "v2-int4", "weight": 0.5},
        ],
        "metrics": [{"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary"}],
    }
    payload.update(overrides)
    return payload


@pytest.fixture
def make_experiment(client: Any, admin: dict[str, str]):  # type: ignore[no-untyped-def]
    """Create (and optionally start) an experiment through the API; returns its JSON."""

    def make(key: str = "exp-1", *, start: bool = False, **overrides: Any) -> dict[str, Any]:
        reply = client.post("/v1/experiments", json=experiment_payload(key, **overrides), headers=admin)
        assert reply.status_code == 201, reply.get_json()
        if start:
            reply = client.post(f"/v1/experiments/{key}/start", headers=admin)
            assert reply.status_code == 200, reply.get_json()
        return reply.get_json()

    return make


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A registry JSON naming tiny ``v1-fp32``/``v2-int4`` engines, plus ``broken`` (bad checkpoint)."""
    from engines.testing import build_tiny_checkpoints

    root = tmp_path_factory.mktemp("tiny-engines")
    specs = build_tiny_checkpoints(root)
    entries = [specs[name].to_dict() for name in ("v1-fp32", "v2-int4")]
    entries.append({**specs["v1-fp32"].to_dict(), "name": "broken", "checkpoint": str(root / "missing")})
    path = Path(root) / "registry.json"
    path.write_text(json.dumps({"engines": entries}))
    return str(path)


@pytest.fixture(scope="module")
def redis_url() -> str:
    """The test Redis database, emptied once per module."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).flushdb()
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    return REDIS_URL
