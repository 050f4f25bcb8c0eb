"""``abtest experiments create/update/show`` with schedules: --ramp, --ramp-step, --start-at, --stop-at."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from abtest.db import Database
from abtest.services.monitor import GuardrailMonitor
from tests.conftest import experiment_payload
from tests.test_cli_experiments import cli_url, run, sqlite_cli, state  # noqa: F401 - fixtures

T0 = (datetime.now(timezone.utc) + timedelta(days=3)).replace(minute=0, second=0, microsecond=0)


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def shown(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M:%S UTC")


def test_create_with_schedule_flags_and_show_prints_the_schedule(cli_url: str) -> None:  # noqa: F811
    result = run("create", "--ramp-step", f"{at(1)}=0.1", "--ramp-step", f"{at(2)}=0.5",
                 "--start-at", at(0.5), "--stop-at", at(48), "--json",
                 input=json.dumps(experiment_payload("sched", coverage=0.01)))
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert [(s["coverage"], s["state"]) for s in view["ramp"]] == [(0.1, "pending"), (0.5, "pending")]
    assert view == state(cli_url, "sched")[0]
    text = run("show", "sched").stdout
    assert f"start at    {shown(0.5)}" in text and f"stop at     {shown(48)}" in text
    assert f"ramp        {shown(1)}  10 %  pending" in text and f"{shown(2)}  50 %  pending" in text

    db = Database(cli_url)  # the monitor starts it at start_at and applies the first step at its time
    try:
        GuardrailMonitor(db, 0.0, schedule_interval_s=0.0, clock=lambda: T0 + timedelta(hours=1)).run_schedules()
    finally:
        db.dispose()
    text = run("show", "sched").stdout
    assert f"{shown(1)}  10 %  applied {shown(1)}" in text and "start at" not in text
    assert "coverage    10 % of eligible units" in text
    audit = run("audit", "sched").stdout
    assert "schedule  ramp_step" in audit and "coverage: 0.01 -> 0.1" in audit and "schedule  start" in audit


def test_update_replaces_or_clears_the_schedule(sqlite_cli: str) -> None:  # noqa: F811
    assert run("create", "--ramp", json.dumps([{"at": at(1), "coverage": 0.2}]), "--stop-at", at(10),
               input=json.dumps(experiment_payload("sched"))).exit_code == 0
    result = run("update", "sched", "--ramp-step", f"{at(2)}=0.3", "--ramp-step", f"{at(3)}=0.6")
    assert result.exit_code == 0, result.output
    assert "ramp: " in result.stdout
    assert [s["coverage"] for s in state(sqlite_cli, "sched")[0]["ramp"]] == [0.3, 0.6]
    cleared = run("update", "sched", "--ramp", "none", "--stop-at", "none", "--start-at", at(1))
    assert cleared.exit_code == 0, cleared.output
    view = state(sqlite_cli, "sched")[0]
    assert view["ramp"] == [] and view["stop_at"] is None and view["start_at"] == (T0 + timedelta(hours=1)).isoformat()


def test_bad_schedule_flags_exit_2_naming_the_field_and_write_nothing(sqlite_cli: str) -> None:  # noqa: F811
    assert run("create", input=json.dumps(experiment_payload("sched"))).exit_code == 0
    before = state(sqlite_cli, "sched")
    cases = [
        (["--ramp-step", f"{at(2)}=0.3", "--ramp-step", f"{at(1)}=0.6"], "ramp[1].at: must be after ramp[0].at"),
        (["--ramp-step", f"{at(2)}=1.5"], "ramp[0].coverage: must be <= 1.0"),
        (["--ramp-step", at(2)], "ramp-step: "),
        (["--ramp-step", f"{at(2)}=half"], "ramp-step: "),
        (["--ramp", "[{"], "ramp: is not valid JSON"),
        (["--ramp", "[]", "--ramp-step", f"{at(2)}=0.3"], "ramp-step: give --ramp or --ramp-step, not both"),
        (["--ramp", json.dumps([{"at": at(1), "coverage": 0.2, "x": 1}])], "ramp[0].x: unknown field"),
        (["--start-at", "2026-12-01 10:00"], "start_at: '2026-12-01 10:00' has no timezone"),
        (["--start-at", at(5), "--stop-at", at(4)], "stop_at: must be after start_at"),
    ]
    for flags, message in cases:
        result = run("update", "sched", *flags)
        assert result.exit_code == 2 and f"Error: {message}" in result.stderr, (flags, result.output)
    bad_create = run("create", "--ramp-step", f"{at(1)}=2", input=json.dumps(experiment_payload("other")))
    assert bad_create.exit_code == 2 and "ramp[0].coverage" in bad_create.stderr
    assert run("show", "other").exit_code == 1
    assert state(sqlite_cli, "sched") == before
