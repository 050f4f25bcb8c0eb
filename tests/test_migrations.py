"""Migrations: one head; upgrade/downgrade on SQLite and PostgreSQL; models and migrations agree.

Migrations are frozen: each holds the SQL it runs and imports no application code, and the
whole chain replays (upgrade, downgrade to base, upgrade) with data written between steps.
"""

from __future__ import annotations

import ast
import sys
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, func, inspect, select, text

from abtest.db import MIGRATIONS_DIR, Database, alembic_config, downgrade, upgrade
from abtest.models import Base, LatencyBucket, RequestLog, UnitOutcome
from abtest.reports.rollups import in_sample, insert_outcomes, rebuild
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
    exp_id = _old_experiment(empty_url, "old")
    now = datetime(2026, 11, 1, tzinfo=timezone.utc)
    rows = [{"request_id": f"r{i}", "experiment_id": exp_id, "phase": 1, "variant": ("control", "treatment")[i % 2],
             "engine": "e", "unit_id": f"u{i % 7}", "in_experiment": True, "shadow": False,
             "status": "ok" if i % 5 else "error", "started_at": now + timedelta(minutes=i), "finished_at": now,
             "latency_ms": 100.0 + i} for i in range(40)]
    columns = ", ".join(rows[0])
    with create_engine(empty_url).begin() as conn:  # SQL of the 0002 schema
        conn.execute(text(f"INSERT INTO requests ({columns}) VALUES ({', '.join(':' + c for c in rows[0])})"), rows)
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


# ------------------------------------------------------------------ frozen migrations
VERSION_FILES = sorted((MIGRATIONS_DIR / "versions").glob("*.py"))
# What a migration may import: alembic, SQLAlchemy and the standard library. Never the
# application (its models and services change; a migration must not).
ALLOWED_IMPORTS = {"__future__", "alembic", "sqlalchemy"} | set(sys.stdlib_module_names)
APPLICATION = {"abtest", "engines", "workers", "benchmarks", "migrations", "tests"}


def test_there_are_migration_files() -> None:
    names = [p.name for p in VERSION_FILES]
    assert len(names) == len(set(names)) >= 4 and names[0].startswith("0001")


@pytest.mark.parametrize("path", VERSION_FILES, ids=lambda p: p.name)
def test_migration_imports_no_application_code(path) -> None:  # type: ignore[no-untyped-def]
    tree = ast.parse(path.read_text(), filename=str(path))
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            imported.append(node.module or "")
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            called = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            assert called not in {"__import__", "import_module", "create_all", "drop_all"}, (
                f"{path.name}: {called}() runs code or schema from outside the migration")
    roots = {name.split(".")[0] for name in imported}
    assert not roots & APPLICATION, f"{path.name} imports application code: {sorted(roots & APPLICATION)}"
    assert roots <= ALLOWED_IMPORTS, f"{path.name} imports {sorted(roots - ALLOWED_IMPORTS)}"
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"upgrade", "downgrade"} <= defined, path.name


def _schema(engine: Engine) -> dict[str, set[str]]:
    found = inspect(engine)
    return {t: {c["name"] for c in found.get_columns(t)} for t in found.get_table_names() if t != "alembic_version"}


def _model_schema() -> dict[str, set[str]]:
    return {t.name: {c.name for c in t.columns} for t in Base.metadata.sorted_tables}


def _revisions() -> list[tuple[str, str]]:
    """(revision, its down revision or "base"), oldest first."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [(r.revision, r.down_revision or "base") for r in reversed(list(script.walk_revisions()))]


_T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _old_experiment(url: str, key: str) -> int:
    """An experiment with two variants, in SQL of the 0001 schema (today's models have later
    columns, so the service layer cannot write into an older schema)."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO experiments (key, name, hypothesis, owner, status, coverage, salt, phase, targeting,"
            " forced, layer_start, layer_end, treatment_paused, version, created_at, updated_at)"
            " VALUES (:k, :k, '', '', 'draft', 1.0, 'salt', 1, '[]', '{}', 0.0, 1.0, :f, 1, :at, :at)"),
            {"k": key, "f": False, "at": _T0})
        exp_id = conn.execute(text("SELECT id FROM experiments WHERE key = :k"), {"k": key}).scalar_one()
        for i, (variant, engine_name) in enumerate((("control", "v1-fp32"), ("treatment", "v2-int4"))):
            conn.execute(text(
                "INSERT INTO variants (experiment_id, key, engine, weight, is_control, shadow, position)"
                " VALUES (:e, :v, :n, 0.5, :c, :f, :i)"),
                {"e": exp_id, "v": variant, "n": engine_name, "c": i == 0, "f": False, "i": i})
    engine.dispose()
    return int(exp_id)


def _write_before_0004(url: str) -> int:
    """An experiment, a logged request and a unit's rollup, as written at revision 0003."""
    exp_id = _old_experiment(url, "replayed")
    engine = create_engine(url)
    with engine.begin() as conn:  # SQL of the 0003 schema (today's models have 0004's columns)
        conn.execute(text(
            "INSERT INTO requests (request_id, experiment_id, phase, variant, engine, unit_id, in_experiment,"
            " shadow, status, started_at, finished_at, latency_ms)"
            " VALUES ('r-old', :e, 1, 'control', 'e', 'u1', :t, :f, 'ok', :at, :at, 120.0)"),
            {"e": exp_id, "t": True, "f": False, "at": _T0})
        conn.execute(text(
            "INSERT INTO unit_outcomes (experiment_id, phase, variant, unit_id, first_at, requests, ok, errors,"
            " rejected, latency_sum) VALUES (:e, 1, 'control', 'u1', :at, 3, 2, 1, 0, 240.0)"),
            {"e": exp_id, "at": _T0})
    engine.dispose()
    return exp_id


def test_replay_upgrade_downgrade_upgrade_with_data(empty_url: str) -> None:
    engine = create_engine(empty_url)
    upgrade(empty_url, "0003")
    exp_id = _write_before_0004(empty_url)

    upgrade(empty_url)  # 0004 adds its columns to rows that are already there
    with engine.connect() as conn:
        assert conn.execute(text("SELECT unavailable FROM unit_outcomes WHERE unit_id = 'u1'")).scalar_one() == 0
        assert conn.execute(text("SELECT engine_ms FROM requests WHERE request_id = 'r-old'")).scalar_one() is None
    with engine.begin() as conn:  # a row written without the new column gets its server default
        conn.execute(text(
            "INSERT INTO unit_outcomes (experiment_id, phase, variant, unit_id, first_at, requests, ok, errors,"
            " rejected, latency_sum) VALUES (:e, 1, 'treatment', 'u2', :at, 1, 1, 0, 0, 80.0)"),
            {"e": exp_id, "at": _T0})
        conn.execute(text("UPDATE requests SET engine_ms = 95.5 WHERE request_id = 'r-old'"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT unavailable FROM unit_outcomes WHERE unit_id = 'u2'")).scalar_one() == 0

    downgrade(empty_url, "0003")  # drops 0004's columns (batch mode on SQLite) and keeps the rows
    schema = _schema(engine)
    assert "unavailable" not in schema["unit_outcomes"] and "engine_ms" not in schema["requests"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM unit_outcomes")).scalar_one() == 2
        assert conn.execute(text("SELECT latency_ms FROM requests WHERE request_id = 'r-old'")).scalar_one() == 120.0

    downgrade(empty_url, "base")
    assert _schema(engine) == {}
    upgrade(empty_url)
    assert _schema(engine) == _model_schema()  # tables and columns, exactly
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    engine.dispose()

    db = Database(empty_url)  # the replayed schema takes today's writes
    spec = {"key": "after", "name": "written after the replay",
            "variants": [{"key": "control", "engine": "v1-fp32", "weight": 0.5, "control": True},
                         {"key": "treatment", "engine": "v2-int4", "weight": 0.5}]}
    with db.transaction() as session:
        exp_id = create_experiment(session, spec, "test", lambda _: True).id
        session.add(UnitOutcome(experiment_id=exp_id, phase=1, variant="control", unit_id="u9", first_at=_T0,
                                requests=1, ok=0, errors=0, rejected=0, latency_sum=0.0))
        session.add(RequestLog(request_id="r-new", experiment_id=exp_id, phase=1, variant="control", engine="e",
                               unit_id="u9", in_experiment=True, shadow=False, status="unavailable",
                               started_at=_T0, finished_at=_T0, latency_ms=5.0, engine_ms=None))
    with db.session() as session:
        assert session.scalars(select(UnitOutcome.unavailable)).all() == [0]
        assert session.scalar(select(RequestLog.status).where(RequestLog.request_id == "r-new")) == "unavailable"
    db.dispose()


def test_each_revision_downgrades_and_upgrades_again(empty_url: str) -> None:
    engine = create_engine(empty_url)
    for revision, down in _revisions():
        upgrade(empty_url, revision)
        after_upgrade = _schema(engine)
        downgrade(empty_url, down)
        upgrade(empty_url, revision)
        assert _schema(engine) == after_upgrade, f"{revision} does not replay to the same schema"
    assert _schema(engine) == _model_schema()
    engine.dispose()


def _unit_llm_sums(engine: Engine) -> dict[tuple[str, str], tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT variant, unit_id, ttft_sum, ttft_n, tokens_sum, tokens_n, decode_n, compute_n, cost_n, unpriced"
            " FROM unit_outcomes"))
        return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def test_0005_fills_the_llm_rollups_of_the_existing_log_and_replays(empty_url: str) -> None:
    """Requests logged before 0005 have a TTFT and token counts: 0005 adds them to the rollups
    (as a rebuild from the log computes them); its own columns are NULL there and count 0."""
    upgrade(empty_url, "0002")
    exp_id = _old_experiment(empty_url, "old")
    rows = [{"request_id": f"r{i}", "experiment_id": exp_id, "phase": 1, "variant": ("control", "treatment")[i % 2],
             "engine": "e", "unit_id": f"u{i % 40}", "in_experiment": True, "shadow": False,
             "status": "ok" if i % 6 else "error", "started_at": _T0 + timedelta(minutes=i), "finished_at": _T0,
             "latency_ms": 100.0 + i, "ttft_ms": None if i % 7 == 0 else 10.0 + i % 13,
             "completion_tokens": 5 + i % 11} for i in range(400)]
    with create_engine(empty_url).begin() as conn:  # SQL of the 0002 schema
        conn.execute(text(f"INSERT INTO requests ({', '.join(rows[0])}) VALUES ({', '.join(':' + c for c in rows[0])})"),
                     rows)
    upgrade(empty_url)  # 0003 fills the rollups, 0005 their TTFT and token sums
    engine = create_engine(empty_url)
    ok = [r for r in rows if r["status"] == "ok"]
    expected: dict[tuple[str, str], list[Any]] = {}
    for r in ok:
        e = expected.setdefault((r["variant"], r["unit_id"]), [0.0, 0, 0, 0, 0, 0, 0, 0])
        if r["ttft_ms"] is not None:
            e[0] += r["ttft_ms"]
            e[1] += 1
        e[2] += r["completion_tokens"]
        e[3] += 1
    got = _unit_llm_sums(engine)
    assert {k: list(v) for k, v in got.items() if k in expected} == expected
    with engine.connect() as conn:
        n_ttft = conn.execute(text("SELECT SUM(count) FROM ttft_buckets")).scalar_one()
        sampled = dict(conn.execute(text("SELECT request_id, ttft_ms FROM latency_samples")).all())
    assert n_ttft == sum(r["ttft_ms"] is not None for r in ok)
    by_id = {r["request_id"]: r for r in rows}
    assert sampled and all(by_id[rid]["ttft_ms"] == ttft for rid, ttft in sampled.items())
    assert {rid for rid, r in by_id.items() if r["status"] == "ok" and in_sample(r["unit_id"])} == set(sampled)
    with engine.begin() as conn:  # what the write path maintains from now on is what 0005 filled
        rebuild(conn)
    assert _unit_llm_sums(engine) == got

    downgrade(empty_url, "0004")  # drops 0005's columns and table, keeps the rows
    schema = _schema(engine)
    assert "ttft_buckets" not in schema and "ttft_sum" not in schema["unit_outcomes"]
    assert "ttft_ms" not in schema["latency_samples"] and "cost" not in schema["requests"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM requests")).scalar_one() == len(rows)
        assert conn.execute(text("SELECT SUM(requests) FROM unit_outcomes")).scalar_one() == len(rows)
    upgrade(empty_url)
    assert _schema(engine) == _model_schema()
    assert _unit_llm_sums(engine) == got
    engine.dispose()
    db = Database(empty_url)  # today's writes land in the new columns
    with db.transaction() as session:
        insert_outcomes(session, [{
            "request_id": "r-new", "experiment_id": exp_id, "phase": 1, "variant": "control", "engine": "v1-fp32",
            "unit_id": "u0", "in_experiment": True, "shadow": False, "status": "ok", "started_at": _T0,
            "finished_at": _T0, "latency_ms": 50.0, "ttft_ms": 4.0, "completion_tokens": 3, "decode_ms": 8.0,
            "finish_reason": "length", "compute_ms": 30.0, "cost": 1e-5}])
    with db.session() as session:
        u = session.get(UnitOutcome, (exp_id, 1, "control", "u0"))
        assert (u.decode_tokens, u.decode_ms_sum, u.truncated, u.compute_sum, u.cost_n) == (2, 8.0, 1, 30.0, 1)
    db.dispose()
