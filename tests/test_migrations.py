"""Migrations: one head; upgrade/downgrade on SQLite and PostgreSQL; models and migrations agree."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, insert, inspect, select, text

from abtest.db import Database, alembic_config, downgrade, upgrade
from abtest.models import Base, LatencyBucket, RequestLog, UnitOutcome
from abtest.services.experiments import create_experiment
from tests.conftest import PG_SERVER_URL, unavailable


def test_single_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.sqlite'}"
        return
    name = f"abtest_mig_{uuid.uuid4().hex[:8]}"
    try:
        server = create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT")
        with server.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        unavailable("PostgreSQL", exc)
    yield PG_SERVER_URL.rsplit("/", 1)[0] + f"/{name}"
    with server.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    server.dispose()


def test_upgrade_downgrade_roundtrip_and_no_autogenerate_diff(empty_url: str) -> None:
    upgrade(empty_url)
    engine = create_engine(empty_url)
    tables = set(inspect(engine).get_table_names())
    assert {t.name for t in Base.metadata.sorted_tables} <= tables
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    downgrade(empty_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(empty_url)
    assert {t.name for t in Base.metadata.sorted_tables} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_rollup_migration_fills_the_rollups_from_the_existing_log(empty_url: str) -> None:
    upgrade(empty_url, "0002")
    db = Database(empty_url)
    spec = {"key": "old", "name": "logged before 0003",
            "variants": [{"key": "control", "engine": "v1-fp32", "weight": 0.5, "control": True},
                         {"key": "treatment", "engine": "v2-int4", "weight": 0.5}]}
    with db.transaction() as session:
        exp_id = create_experiment(session, spec, "test", lambda _: True).id
    now = datetime(2026, 11, 1, tzinfo=timezone.utc)
    rows = [{"request_id": f"r{i}", "experiment_id": exp_id, "phase": 1, "variant": ("control", "treatment")[i % 2],
             "engine": "e", "unit_id": f"u{i % 7}", "in_experiment": True, "shadow": False,
             "status": "ok" if i % 5 else "error", "started_at": now + timedelta(minutes=i), "finished_at": now,
             "latency_ms": 100.0 + i} for i in range(40)]
    with db.transaction() as session:
        session.execute(insert(RequestLog), rows)
    db.dispose()
    upgrade(empty_url)
    db = Database(empty_url)
    with db.session() as session:
        units = session.scalars(select(UnitOutcome)).all()
        assert sum(u.requests for u in units) == 40
        assert sum(u.errors for u in units) == 8
        assert sum(u.latency_sum for u in units) == sum(r["latency_ms"] for r in rows if r["status"] == "ok")
        assert len(units) == 14  # 7 units, each seen in both variants (i % 7 vs i % 2)
        assert session.scalar(select(func.sum(LatencyBucket.count))) == 32
    db.dispose()
