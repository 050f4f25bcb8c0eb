"""Apply due schedules: stop at ``stop_at``, start at ``start_at``, ramp coverage step by step.

:func:`apply_schedules` is one round, run from the monitor's loop (:mod:`abtest.services.monitor`)
with the time it is given (tests pass a fake clock). Each due experiment is handled in its own
transaction with its row locked (PostgreSQL ``SELECT ... FOR UPDATE``; on SQLite an empty
write takes the database's write lock first) and its state read again under the lock, so with
several API processes each running a monitor every step, start and stop happens exactly once:
a second monitor waits for the first one's commit, then finds nothing left to do. One
experiment's failure is logged and does not stop the others.

Audit entries are written under the actor ``schedule``: ``ramp_step`` (the step's index and
time, the coverage from/to, the steps it superseded), ``start`` and ``stop`` (as a manual
transition, with the scheduled time), and ``start_skipped`` when a draft's ``start_at`` came
after its ``stop_at`` had already passed (the start is dropped; the experiment stays a draft).
The rules of the schedule itself are in :mod:`abtest.services.schedules`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session

from ..db import Database
from ..models import AuditEntry, Experiment
from .experiments import get_experiment, transition
from .schedules import advance_ramp

__all__ = ["ScheduleAction", "apply_schedules", "ACTOR"]

log = logging.getLogger(__name__)
ACTOR = "schedule"


@dataclass(frozen=True)
class ScheduleAction:
    """What a round did to one experiment (``action`` None: nothing was due after all, or
    ``error`` says why it failed)."""

    experiment: str
    action: str | None
    changes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def apply_schedules(db: Database, now: datetime, actor: str = ACTOR) -> list[ScheduleAction]:
    """One round at ``now``: every due stop, then start, then ramp step; the actions taken."""
    with db.session() as session:
        due = list(session.scalars(select(Experiment.key).where(or_(
            Experiment.status.in_(("running", "paused")) & (Experiment.stop_at <= now),
            (Experiment.status == "draft") & (Experiment.start_at <= now),
            (Experiment.status == "running") & (Experiment.ramp_next_at <= now),
        )).order_by(Experiment.id)))
    results = []
    for key in due:
        try:
            with db.transaction() as session:
                results.extend(_apply_one(session, key, now, actor))
        except Exception as exc:  # noqa: BLE001 - isolate failures per experiment
            log.exception("schedule of %s failed", key)
            results.append(ScheduleAction(key, None, error=f"{type(exc).__name__}: {exc}"))
    return [r for r in results if r.action is not None or r.error is not None]


def _locked(session: Session, key: str) -> Experiment:
    """``key``'s row, locked until the transaction ends and read after the lock was taken."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("UPDATE experiments SET version = version WHERE 1 = 0"))
    return get_experiment(session, key, for_update=True)


def _apply_one(session: Session, key: str, now: datetime, actor: str) -> list[ScheduleAction]:
    exp = _locked(session, key)
    done: list[ScheduleAction] = []
    if exp.status in ("running", "paused") and exp.stop_at is not None and exp.stop_at <= now:
        planned = exp.stop_at.isoformat()
        transition(session, exp, "stop", actor, details={"reason": f"stop_at {planned}"}, at=now)
        return [ScheduleAction(key, "stop", {"stop_at": planned})]
    if exp.status == "draft" and exp.start_at is not None and exp.start_at <= now:
        planned = exp.start_at.isoformat()
        if exp.stop_at is not None and exp.stop_at <= now:
            changes = {"reason": f"start_at {planned} came after stop_at {exp.stop_at.isoformat()} had passed",
                       "start_at": {"from": planned, "to": None}}
            exp.start_at = None
            _bump(session, exp, actor, "start_skipped", changes, now)
            return [ScheduleAction(key, "start_skipped", changes)]
        transition(session, exp, "start", actor, details={"reason": f"start_at {planned}"}, at=now)
        done.append(ScheduleAction(key, "start", {"start_at": planned}))
    changes = advance_ramp(exp, now)
    if changes is not None:
        _bump(session, exp, actor, "ramp_step", changes, now)
        done.append(ScheduleAction(key, "ramp_step", changes))
    return done


def _bump(session: Session, exp: Experiment, actor: str, action: str, changes: dict[str, Any],
          now: datetime) -> None:
    exp.updated_at, exp.version = now, exp.version + 1
    session.add(AuditEntry(experiment_id=exp.id, at=now, actor=actor, action=action, changes=changes))
