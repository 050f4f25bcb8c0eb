"""The monitor applies schedules at their times (a fake clock): ramp steps, start_at, stop_at.

Every round is called directly (``run_schedules``), so nothing sleeps; the thread test only
waits, with a deadline, for its own rounds to happen.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import update

from abtest.client import definitions as defs
from abtest.evaluator import assign
from abtest.models import Experiment
from abtest.services.monitor import GuardrailMonitor

T0 = (datetime.now(timezone.utc) + timedelta(days=2)).replace(microsecond=0)
HOUR = timedelta(hours=1)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def iso(at: datetime) -> str:
    return at.isoformat()


def steps(*pairs: tuple[float, float]) -> list[dict[str, Any]]:
    """``(hours after T0, coverage)`` pairs as a ramp."""
    return [{"at": iso(T0 + h * HOUR), "coverage": c} for h, c in pairs]


def monitor(services: Any, clock: Clock, changed: list[int] | None = None) -> GuardrailMonitor:
    return GuardrailMonitor(services.db, interval_s=0.0, schedule_interval_s=0.0, clock=clock,
                            on_change=(lambda: changed.append(1)) if changed is not None else None)


def view(client: Any, admin: dict[str, str], key: str) -> dict[str, Any]:
    return client.get(f"/v1/experiments/{key}", headers=admin).get_json()


def audit(client: Any, admin: dict[str, str], key: str, action: str | None = None) -> list[dict[str, Any]]:
    entries = client.get(f"/v1/experiments/{key}/audit", headers=admin).get_json()["entries"]
    return [e for e in entries if action is None or e["action"] == action]


def served_share(client: Any, sdk: dict[str, str], key: str, units: int = 4000) -> tuple[str, float]:
    """(definitions version, share of units the local evaluator enrolls) from GET /v1/sdk/definitions."""
    version, configs = defs.parse(client.get("/v1/sdk/definitions", headers=sdk).get_json())
    config = configs[key]
    enrolled = sum(assign(config, f"unit-{i}", {}).in_experiment for i in range(units))
    return version, enrolled / units


def test_ramp_steps_apply_at_their_times_once_each_and_reach_the_sdk(client, admin, sdk, services,
                                                                     make_experiment) -> None:
    make_experiment("ramped", start=True, coverage=0.05, ramp=steps((1, 0.2), (2, 0.5), (3, 1.0)))
    clock, changed = Clock(T0), []
    mon = monitor(services, clock, changed)
    version0, share0 = served_share(client, sdk, "ramped")
    assert abs(share0 - 0.05) < 0.02
    assert mon.run_schedules() == [] and view(client, admin, "ramped")["coverage"] == 0.05

    clock.at = T0 + HOUR + timedelta(seconds=20)
    [action] = mon.run_schedules()
    assert (action.experiment, action.action, action.changes["step"]) == ("ramped", "ramp_step", 0)
    assert mon.run_schedules() == []  # applied exactly once
    exp = view(client, admin, "ramped")
    assert exp["coverage"] == 0.2 and exp["phase"] == 1  # a coverage change keeps the phase
    assert [(s["state"], s["applied_at"]) for s in exp["ramp"]] == [
        ("applied", iso(clock.at)), ("pending", None), ("pending", None)]
    version1, share1 = served_share(client, sdk, "ramped")
    assert version1 != version0 and abs(share1 - 0.2) < 0.03
    assert changed == [1]

    clock.at = T0 + 3.5 * HOUR  # a missed round: steps 1 and 2 are both due, only the latest applies
    [action] = mon.run_schedules()
    assert action.changes["step"] == 2 and action.changes["skipped"] == [1]
    exp = view(client, admin, "ramped")
    assert exp["coverage"] == 1.0 and [s["state"] for s in exp["ramp"]] == ["applied", "skipped", "applied"]
    assert served_share(client, sdk, "ramped")[1] == 1.0
    clock.at += 24 * HOUR
    assert mon.run_schedules() == [] and changed == [1, 1]

    entries = audit(client, admin, "ramped", "ramp_step")
    assert [(e["actor"], e["changes"]["step"], e["changes"]["coverage"]) for e in entries] == [
        ("schedule", 0, {"from": 0.05, "to": 0.2}), ("schedule", 2, {"from": 0.2, "to": 1.0})]
    assert entries[0]["changes"]["at"] == iso(T0 + HOUR) and "skipped" not in entries[0]["changes"]


def test_steps_wait_while_draft_or_paused_and_only_the_latest_due_one_applies(client, admin, services,
                                                                              make_experiment) -> None:
    make_experiment("waits", coverage=0.1, ramp=steps((1, 0.3), (2, 0.6), (4, 0.9)))
    clock = Clock(T0 + 2.5 * HOUR)
    mon = monitor(services, clock)
    assert mon.run_schedules() == [] and view(client, admin, "waits")["coverage"] == 0.1  # a draft
    client.post("/v1/experiments/waits/start", headers=admin)
    [action] = mon.run_schedules()  # the first round after the start: only the latest past step
    assert action.changes["step"] == 1 and action.changes["skipped"] == [0]
    assert view(client, admin, "waits")["coverage"] == 0.6
    client.post("/v1/experiments/waits/pause", headers=admin)
    clock.at = T0 + 5 * HOUR
    assert mon.run_schedules() == [] and view(client, admin, "waits")["coverage"] == 0.6
    client.post("/v1/experiments/waits/start", headers=admin)
    assert [a.changes["step"] for a in mon.run_schedules()] == [2]
    assert view(client, admin, "waits")["coverage"] == 0.9


def test_a_patch_of_coverage_keeps_the_schedule_and_a_new_ramp_starts_over(client, admin, services,
                                                                          make_experiment) -> None:
    make_experiment("patched", start=True, coverage=0.1, ramp=steps((1, 0.3), (2, 0.6)))
    clock = Clock(T0 + 1.5 * HOUR)
    mon = monitor(services, clock)
    mon.run_schedules()
    client.patch("/v1/experiments/patched", json={"coverage": 0.05}, headers=admin)  # an emergency ramp-down
    clock.at = T0 + 2 * HOUR
    mon.run_schedules()
    assert view(client, admin, "patched")["coverage"] == 0.6  # the next step still applies
    client.patch("/v1/experiments/patched", json={"ramp": steps((3, 0.8))}, headers=admin)
    assert mon.run_schedules() == [] and view(client, admin, "patched")["ramp"][0]["state"] == "pending"
    clock.at = T0 + 3 * HOUR
    assert [a.changes["coverage"] for a in mon.run_schedules()] == [{"from": 0.6, "to": 0.8}]


def test_start_at_starts_a_draft_and_stop_at_stops_it(client, admin, services, make_experiment) -> None:
    make_experiment("window", coverage=0.2, start_at=iso(T0 + HOUR), stop_at=iso(T0 + 5 * HOUR),
                    ramp=steps((0.5, 0.4), (3, 0.7)))
    clock, changed = Clock(T0), []
    mon = monitor(services, clock, changed)
    assert mon.run_schedules() == [] and view(client, admin, "window")["status"] == "draft"
    clock.at = T0 + HOUR
    assert [a.action for a in mon.run_schedules()] == ["start", "ramp_step"]  # started, then its due step
    exp = view(client, admin, "window")
    assert exp["status"] == "running" and exp["started_at"] == iso(T0 + HOUR) and exp["start_at"] is None
    assert exp["coverage"] == 0.4 and exp["stop_at"] == iso(T0 + 5 * HOUR)
    client.post("/v1/experiments/window/pause", headers=admin)
    clock.at = T0 + 6 * HOUR
    assert [a.action for a in mon.run_schedules()] == ["stop"]  # paused ones stop too
    exp = view(client, admin, "window")
    assert exp["status"] == "stopped" and exp["stopped_at"] == iso(T0 + 6 * HOUR) and exp["stop_at"] is None
    assert exp["coverage"] == 0.4  # no step applies while paused or after the stop
    assert mon.run_schedules() == [] and changed == [1, 1]
    entries = {e["action"]: e for e in audit(client, admin, "window") if e["actor"] == "schedule"}
    assert set(entries) == {"start", "ramp_step", "stop"}
    assert entries["start"]["changes"]["status"] == {"from": "draft", "to": "running"}
    assert entries["start"]["changes"]["reason"] == f"start_at {iso(T0 + HOUR)}"
    assert entries["stop"]["changes"]["status"] == {"from": "paused", "to": "stopped"}
    assert entries["stop"]["changes"]["stop_at"] == {"from": iso(T0 + 5 * HOUR), "to": None}


def test_a_manual_start_clears_start_at_and_is_refused_once_stop_at_has_passed(client, admin, services,
                                                                               make_experiment) -> None:
    make_experiment("manual", start_at=iso(T0 + HOUR))
    started = client.post("/v1/experiments/manual/start", headers=admin).get_json()
    assert started["status"] == "running" and started["start_at"] is None
    assert audit(client, admin, "manual", "start")[0]["changes"]["start_at"] == {"from": iso(T0 + HOUR), "to": None}
    mon = monitor(services, Clock(T0 + 2 * HOUR))
    assert mon.run_schedules() == []  # nothing pending any more

    make_experiment("late", stop_at=iso(T0 + HOUR))
    with services.db.transaction() as session:  # as if that time had come while it was a draft
        session.execute(update(Experiment).where(Experiment.key == "late")
                        .values(stop_at=datetime.now(timezone.utc) - HOUR))
    reply = client.post("/v1/experiments/late/start", headers=admin)
    assert reply.status_code == 409 and reply.get_json()["error"]["details"]["field"] == "stop_at"
    assert view(client, admin, "late")["status"] == "draft"


def test_a_start_after_a_passed_stop_at_is_skipped(client, admin, services, make_experiment) -> None:
    make_experiment("missed", start_at=iso(T0 + HOUR), stop_at=iso(T0 + 2 * HOUR))
    mon = monitor(services, Clock(T0 + 3 * HOUR))  # the monitor was down through both times
    assert [a.action for a in mon.run_schedules()] == ["start_skipped"]
    exp = view(client, admin, "missed")
    assert exp["status"] == "draft" and exp["start_at"] is None and exp["started_at"] is None
    assert mon.run_schedules() == []
    assert "had passed" in audit(client, admin, "missed", "start_skipped")[0]["changes"]["reason"]


def test_a_failing_schedule_is_isolated_and_the_monitor_thread_keeps_going(client, admin, services,
                                                                           make_experiment) -> None:
    make_experiment("broken", start=True, ramp=steps((1, 0.5)))
    make_experiment("fine", start=True, coverage=0.1, ramp=steps((1, 0.5), (2, 0.9)))
    with services.db.transaction() as session:  # a step the service cannot read
        session.execute(update(Experiment).where(Experiment.key == "broken")
                        .values(ramp=[{"at": "garbage", "coverage": 0.5, "state": "pending", "applied_at": None}]))
    clock = Clock(T0 + HOUR)
    results = monitor(services, clock).run_schedules()
    assert [(r.experiment, r.action) for r in results] == [("broken", None), ("fine", "ramp_step")]
    assert "ValueError" in results[0].error

    thread = GuardrailMonitor(services.db, interval_s=0.0, schedule_interval_s=0.02, clock=clock).start()
    try:
        clock.at = T0 + 2 * HOUR  # the thread's rounds keep failing on "broken" and must still apply this
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and view(client, admin, "fine")["coverage"] != 0.9:
            time.sleep(0.02)
        assert thread._thread.is_alive()
    finally:
        thread.stop()
    assert view(client, admin, "fine")["coverage"] == 0.9 and not thread._thread.is_alive()
    assert view(client, admin, "broken")["coverage"] == 1.0


def test_the_app_runs_schedule_rounds_even_with_guardrail_checks_off(sqlite_url, tmp_path) -> None:
    from abtest.app import create_app

    app = create_app({"database_url": sqlite_url, "preload_engines": False, "checkpoint_dir": str(tmp_path),
                      "guardrail_interval_s": 0.0, "schedule_interval_s": 60.0})
    services = app.extensions["abtest"]
    try:
        mon = services.monitor
        assert mon is not None and mon._thread.is_alive()
        assert (mon.interval_s, mon.schedule_interval_s) == (0.0, 60.0)
    finally:
        services.close()
    assert not mon._thread.is_alive()
