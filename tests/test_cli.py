"""The abtest CLI against a real database (a fresh SQLite file per test)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import delete, func, insert, select

from abtest.cli import cli
from abtest.db import Database
from abtest.models import RequestLog, UnitOutcome
from abtest.services.experiments import get_experiment
from abtest.services.keys import hash_key
from tests.conftest import experiment_payload


@pytest.fixture
def runner(tmp_path, monkeypatch) -> CliRunner:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    monkeypatch.setenv("ABTEST_DATABASE_URL", url)
    monkeypatch.setenv("ABTEST_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    return CliRunner()


def test_keys_create_prints_the_key_alone_and_stores_only_its_hash(runner, tmp_path) -> None:
    result = runner.invoke(cli, ["keys", "create", "--scope", "admin", "--name", "ops"])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert result.stdout == key + "\n" and key.startswith("abt_")
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("cli.sqlite*"))  # main file and WAL
    assert key.encode() not in raw and hash_key(key).encode() in raw
    listed = runner.invoke(cli, ["keys", "list"]).stdout
    assert "ops" in listed and "admin" in listed and "active" in listed
    assert runner.invoke(cli, ["keys", "revoke", "ops"]).exit_code == 0
    assert "revoked" in runner.invoke(cli, ["keys", "list"]).stdout
    assert runner.invoke(cli, ["keys", "create", "--scope", "root", "--name", "x"]).exit_code != 0


def test_experiments_create_list_show_start_stop(runner, tmp_path) -> None:
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(experiment_payload("cli-exp")))
    result = runner.invoke(cli, ["experiments", "create", "-f", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "cli-exp: created (draft, 2 variants)"
    assert "cli-exp\tdraft" in runner.invoke(cli, ["experiments", "list"]).stdout
    assert runner.invoke(cli, ["experiments", "start", "cli-exp"]).stdout.strip() == "cli-exp: running"
    assert json.loads(runner.invoke(cli, ["experiments", "show", "cli-exp", "--json"]).stdout)["status"] == "running"
    assert "status      running (started " in runner.invoke(cli, ["experiments", "show", "cli-exp"]).stdout
    assert runner.invoke(cli, ["experiments", "stop", "cli-exp"]).stdout.strip() == "cli-exp: stopped"
    again = runner.invoke(cli, ["experiments", "start", "cli-exp"])
    assert again.exit_code != 0 and "conflict" in again.output


def test_experiments_create_reports_bad_files(runner, tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{nope")
    result = runner.invoke(cli, ["experiments", "create", "-f", str(path)])
    assert result.exit_code != 0 and "not valid JSON" in result.output
    path.write_text(json.dumps(experiment_payload("x", coverage=3)))
    result = runner.invoke(cli, ["experiments", "create", "-f", str(path)])
    assert result.exit_code == 2 and result.stderr.strip() == "Error: coverage: must be <= 1.0"
    assert runner.invoke(cli, ["experiments", "list"]).stdout == ""


def test_db_downgrade_and_upgrade(runner, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    assert runner.invoke(cli, ["db", "downgrade", "--revision", "base"]).exit_code == 0
    assert Database(url).is_empty() is False  # only alembic_version is left
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(cli, ["keys", "create", "--scope", "sdk", "--name", "app"]).exit_code == 0


def test_db_rebuild_rollups_recomputes_them_from_the_request_log(runner, tmp_path) -> None:
    spec = tmp_path / "exp.json"
    spec.write_text(json.dumps(experiment_payload("bulk")))
    assert runner.invoke(cli, ["experiments", "create", "-f", str(spec)]).exit_code == 0
    db = Database(f"sqlite:///{tmp_path / 'cli.sqlite'}")
    now = datetime(2026, 11, 1, tzinfo=timezone.utc)
    with db.transaction() as session:  # a bulk load that bypasses the outcome log
        exp_id = get_experiment(session, "bulk").id
        session.execute(insert(RequestLog), [
            {"request_id": f"r{i}", "experiment_id": exp_id, "phase": 1, "variant": "control", "engine": "e",
             "unit_id": f"u{i % 3}", "in_experiment": True, "shadow": False, "status": "ok", "started_at": now,
             "finished_at": now, "latency_ms": 10.0} for i in range(9)])
        session.execute(delete(UnitOutcome))
    result = runner.invoke(cli, ["db", "rebuild-rollups", "--experiment", "bulk"])
    assert result.exit_code == 0, result.output
    with db.session() as session:
        assert session.scalar(select(func.sum(UnitOutcome.requests))) == 9
        assert session.scalar(select(func.count()).select_from(UnitOutcome)) == 3
    db.dispose()
    assert "not_found" in runner.invoke(cli, ["db", "rebuild-rollups", "--experiment", "nope"]).output


HELP_EXEMPT: tuple[str, ...] = ()  # every command and option, the engines group, serve and worker included


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        if not prefix and name in HELP_EXEMPT:
            continue
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
    return found


def test_every_command_and_option_has_help_text() -> None:
    commands = _commands(cli)
    assert {"db upgrade", "db downgrade", "keys list", "keys create", "experiments update", "demo"} <= {
        name for name, _ in commands}
    missing = [name for name, command in commands if not (command.help or "").strip()]
    missing += [f"{name} {p.opts[0]}" for name, command in commands for p in command.params
                if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert missing == []
    for args in (["db", "upgrade", "--help"], ["keys", "list", "--help"], ["experiments", "--help"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0 and result.stdout.count("\n") > 4, args
