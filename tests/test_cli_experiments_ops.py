"""``abtest experiments`` start/pause/stop, resume, audit and export against real databases, and its help."""

from __future__ import annotations

import csv
import getpass
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click
from click.testing import CliRunner
from sqlalchemy import insert

from abtest.cli import cli
from abtest.db import Database
from abtest.models import Event, Exposure, RequestLog
from abtest.services import experiments as svc
from tests.test_cli_experiments import cli_url, create, run, sqlite_cli, state  # noqa: F401 (fixtures)

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def test_transitions_record_their_actor_and_refuse_illegal_moves(cli_url: str) -> None:
    create("life")
    for action, status in (("start", "running"), ("pause", "paused"), ("start", "running"), ("stop", "stopped")):
        result = run(action, "life", "--actor", f"ops-{action}")
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == f"life: {status}"
    view, audit = state(cli_url, "life")
    assert view["status"] == "stopped" and view["stopped_at"] is not None
    assert [(e["actor"], e["action"]) for e in audit[1:]] == [
        ("ops-start", "start"), ("ops-pause", "pause"), ("ops-start", "start"), ("ops-stop", "stop")]
    again = run("start", "life")
    assert again.exit_code == 1 and "conflict: cannot start an experiment that is stopped" in again.stderr
    assert state(cli_url, "life") == (view, audit)
    assert json.loads(run("show", "life", "--json").stdout)["status"] == "stopped"
    assert run("pause", "missing").exit_code == 1


def test_start_json_is_the_api_view(sqlite_cli: str) -> None:
    create("js")
    result = run("start", "js", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == state(sqlite_cli, "js")[0]


def _pause_as_the_guardrail_monitor(url: str, key: str) -> None:
    db = Database(url)
    with db.transaction() as session:
        assert svc.pause_treatment(session, svc.get_experiment(session, key, for_update=True), "guardrail-monitor",
                                   "error_rate harmed", action="guardrail_breach")
    db.dispose()


def test_resume_a_guardrail_paused_treatment(cli_url: str) -> None:
    create("guarded", start=True)
    _pause_as_the_guardrail_monitor(cli_url, "guarded")
    paused_version = state(cli_url, "guarded")[0]["version"]
    result = run("resume", "guarded", "--reason", "spike was a cold cache", "--actor", "alice")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "guarded: treatment resumed (running)"
    view, audit = state(cli_url, "guarded")
    assert view["treatment_paused"] is False and view["version"] == paused_version + 1
    assert (audit[-1]["actor"], audit[-1]["action"]) == ("alice", "resume_treatment")
    assert audit[-1]["changes"] == {"reason": "spike was a cold cache", "treatment_paused": {"from": True, "to": False}}
    again = run("resume", "guarded")
    assert again.exit_code == 1 and "conflict: the treatment of 'guarded' is not paused" in again.stderr
    assert state(cli_url, "guarded") == (view, audit)


def test_resume_refuses_a_stopped_experiment_and_a_bad_reason(sqlite_cli: str) -> None:
    create("halted", start=True)
    _pause_as_the_guardrail_monitor(sqlite_cli, "halted")
    before = state(sqlite_cli, "halted")
    bad = run("resume", "halted", "--reason", "x" * 1001)
    assert bad.exit_code == 2 and "reason: must be at most 1000 characters" in bad.stderr
    assert state(sqlite_cli, "halted") == before
    assert run("stop", "halted").exit_code == 0
    stopped = run("resume", "halted")
    assert stopped.exit_code == 1 and "is stopped and can no longer change" in stopped.stderr
    assert state(sqlite_cli, "halted")[0]["treatment_paused"] is True


def test_audit_text_and_json(cli_url: str) -> None:
    create("audited")
    assert run("start", "audited", "--actor", "bob").exit_code == 0
    assert run("update", "audited", "--coverage", "0.5", "--actor", "carol").exit_code == 0
    entries = state(cli_url, "audited")[1]
    as_json = json.loads(run("audit", "audited", "--json").stdout)
    assert as_json == {"experiment": "audited", "entries": entries}
    lines = run("audit", "audited").stdout.splitlines()
    stamp = datetime.fromisoformat(entries[2]["at"]).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert lines[0].endswith(f"cli:{getpass.getuser()}  create")
    assert lines[1] == "    created, phase 1: control v1-fp32 0.5, treatment v2-int4 0.5"
    assert lines[2:] == [lines[2].split("  ")[0] + "  bob  start", "    status: draft -> running",
                         f"{stamp}  carol  update", "    coverage: 1.0 -> 0.5"]
    missing = run("audit", "nope")
    assert missing.exit_code == 1 and "not_found" in missing.stderr


def _load_rows(url: str, key: str) -> None:
    db = Database(url)
    with db.transaction() as session:
        exp_id = svc.get_experiment(session, key).id
        session.execute(insert(RequestLog), [
            {"request_id": f"r{i}", "experiment_id": exp_id, "phase": 1, "variant": "control", "engine": "v1-fp32",
             "unit_id": f"u{i % 3}", "in_experiment": True, "shadow": False, "status": "ok",
             "started_at": T0 + timedelta(seconds=i), "finished_at": T0 + timedelta(seconds=i), "latency_ms": 10.0 + i}
            for i in range(5)])
        session.execute(insert(Exposure), [
            {"experiment_id": exp_id, "phase": 1, "unit_id": f"u{i}", "variant": "control",
             "first_seen": T0, "last_seen": T0}
            for i in range(3)])
        session.execute(insert(Event), [
            {"event_id": "e1", "unit_id": "u1", "name": "purchase", "value": 3.5, "timestamp": T0, "received_at": T0},
            {"event_id": "e2", "unit_id": "=cmd|' /C calc'!A0", "name": "purchase", "value": 1.0, "timestamp": T0,
             "received_at": T0, "experiment_key": key},
            {"event_id": "e3", "unit_id": "stranger", "name": "purchase", "value": 1.0, "timestamp": T0,
             "received_at": T0}])
    db.dispose()


def test_export_writes_each_table_as_csv(cli_url: str, tmp_path: Path) -> None:
    create("exported", start=True)
    _load_rows(cli_url, "exported")
    out = tmp_path / "requests.csv"
    result = run("export", "exported", "--table", "requests", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert f"5 requests rows of exported written to {out}" in result.stderr
    requests = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert [r["request_id"] for r in requests] == [f"r{i}" for i in range(5)]
    assert [float(r["latency_ms"]) for r in requests] == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert {r["unit_id"] for r in requests} == {"u0", "u1", "u2"}
    exposures = run("export", "exported", "--table", "exposures")
    assert exposures.exit_code == 0, exposures.output
    assert [r["unit_id"] for r in csv.DictReader(io.StringIO(exposures.stdout))] == ["u0", "u1", "u2"]
    events = list(csv.DictReader(io.StringIO(run("export", "exported", "--table", "events").stdout)))
    assert [e["event_id"] for e in events] == ["e1", "e2"]  # exposed units or naming the experiment
    assert events[1]["unit_id"] == "'=cmd|' /C calc'!A0"  # never a formula in a spreadsheet


def test_export_refusals_create_no_file(sqlite_cli: str, tmp_path: Path) -> None:
    create("ex")
    out = tmp_path / "out.csv"
    bad = run("export", "ex", "--table", "users", "-o", str(out))
    assert bad.exit_code == 2 and "table: must be one of exposures, requests, events" in bad.stderr
    missing = run("export", "nope", "--table", "requests", "-o", str(out))
    assert missing.exit_code == 1 and "not_found" in missing.stderr
    assert not out.exists() and not list(tmp_path.glob(".abtest-export-*"))


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((f"{prefix}{name}", command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
    return found


def test_every_experiments_command_and_option_has_help() -> None:
    commands = _commands(cli.commands["experiments"], "experiments ")
    assert {name.split()[-1] for name, _ in commands} == {
        "create", "list", "show", "update", "start", "pause", "stop", "resume", "audit", "export"}
    for name, command in commands:
        assert (command.help or "").strip(), name
        for param in command.params:
            if isinstance(param, click.Option):
                assert (param.help or "").strip(), f"{name} {param.opts[0]}"


def test_update_help_shows_examples_and_every_mutable_field() -> None:
    from abtest.validation.experiments import MUTABLE_FIELDS

    result = CliRunner().invoke(cli, ["experiments", "update", "--help"])
    assert result.exit_code == 0
    assert "abtest experiments update v2-vs-v1 --weights control=0.8,treatment=0.2 --yes" in result.stdout
    for field in MUTABLE_FIELDS:
        assert field in result.stdout, field
