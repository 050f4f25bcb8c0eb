"""Two monitors (two database pools, as two API processes have) racing on the same schedules:
every ramp step, start and stop happens exactly once (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from abtest.db import Database
from abtest.models import AuditEntry, Experiment
from abtest.services.monitor import GuardrailMonitor
from abtest.services.scheduler import ScheduleAction

T0 = (datetime.now(timezone.utc) + timedelta(days=2)).replace(microsecond=0)
HOUR = timedelta(hours=1)
EXPERIMENTS = 6
ROUNDS = 8  # one step comes due per round


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def race(monitors: list[GuardrailMonitor]) -> list[list[ScheduleAction]]:
    """Run one schedule round of every monitor at once; the actions of each."""
    barrier = threading.Barrier(len(monitors))
    results: list[list[ScheduleAction] | None] = [None] * len(monitors)

    def go(i: int) -> None:
        barrier.wait()
        results[i] = monitors[i].run_schedules()

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(monitors))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in results), "a round did not finish"
    return results  # type: ignore[return-value]


def test_two_monitors_apply_each_step_start_and_stop_exactly_once(db_url, make_experiment) -> None:
    for i in range(EXPERIMENTS):
        ramp = [{"at": (T0 + (r + 1) * HOUR).isoformat(), "coverage": round(0.1 * (r + 1), 2)}
                for r in range(ROUNDS - 1)]
        make_experiment(f"race-{i}", coverage=0.05, ramp=ramp, start_at=T0.isoformat(),
                        stop_at=(T0 + (ROUNDS - 0.5) * HOUR).isoformat())
    clock = Clock(T0)
    pools = [Database(db_url), Database(db_url)]
    try:
        monitors = [GuardrailMonitor(db, 0.0, schedule_interval_s=0.0, clock=clock) for db in pools]
        done: list[ScheduleAction] = []
        for r in range(ROUNDS + 1):
            clock.at = T0 + r * HOUR
            rounds = race(monitors)
            assert all(a.error is None for actions in rounds for a in actions), rounds
            done += [a for actions in rounds for a in actions]
        again = race(monitors)
        assert again == [[], []]
    finally:
        for db in pools:
            db.dispose()

    per = Counter((a.experiment, a.action, a.changes.get("step")) for a in done)
    expected = {(f"race-{i}", "start", None) for i in range(EXPERIMENTS)}
    expected |= {(f"race-{i}", "stop", None) for i in range(EXPERIMENTS)}
    expected |= {(f"race-{i}", "ramp_step", s) for i in range(EXPERIMENTS) for s in range(ROUNDS - 1)}
    assert set(per) == expected and set(per.values()) == {1}  # each exactly once, across both monitors

    check = Database(db_url)
    try:
        with check.session() as session:
            rows = {e.key: e for e in session.scalars(select(Experiment))}
            audit = Counter((e.experiment_id, e.action) for e in session.scalars(
                select(AuditEntry).where(AuditEntry.actor == "schedule")))
    finally:
        check.dispose()
    for i in range(EXPERIMENTS):
        exp = rows[f"race-{i}"]
        assert exp.status == "stopped" and exp.ramp_applied == ROUNDS - 1 and exp.ramp_next_at is None
        assert exp.coverage == round(0.1 * (ROUNDS - 1), 2)
        assert [s["state"] for s in exp.ramp] == ["applied"] * (ROUNDS - 1)
        assert exp.version == 1 + 1 + (ROUNDS - 1) + 1  # created, started, one per step, stopped
        assert audit[(exp.id, "ramp_step")] == ROUNDS - 1
        assert audit[(exp.id, "start")] == audit[(exp.id, "stop")] == 1
