"""An experiment's schedule on the model: set it from a payload, show it, and advance it.

The schedule is a coverage ramp (steps of time and coverage) and optional ``start_at`` /
``stop_at`` times; :mod:`abtest.services.scheduler` applies it from the monitor's loop.

Rules:

* A step is applied only while the experiment is running. When several steps are due at once
  (steps already past when the experiment starts, or a round missed while the monitor was
  down or the experiment paused), only the latest due step's coverage is applied; the earlier
  ones are marked ``skipped`` (superseded) and named in the audit entry. So a step whose time
  has already passed at creation takes effect at the first round after the start, unless a
  later step is also due.
* Setting ``ramp`` (create or PATCH) replaces the whole schedule: every step is pending again.
  A coverage PATCH keeps the schedule: the next due step sets the coverage again.
* ``start_at`` is cleared when the experiment starts (by the monitor or by hand), ``stop_at``
  when it stops: a manual start or stop simply does what it says, and the view shows no time
  still pending. A start is refused while ``stop_at`` has already passed (PATCH it first).

No Flask and no queries here: plain functions on an :class:`~abtest.models.Experiment`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..errors import ValidationError
from ..models import Experiment
from ..validation import Fields
from ..validation.schedules import parse_ramp, parse_window, step_time

__all__ = ["set_schedule", "schedule_view", "advance_ramp", "RampAdvance"]

RampAdvance = dict[str, Any]


def set_schedule(exp: Experiment, f: Fields, now: datetime) -> None:
    """Apply the payload's ``ramp``, ``start_at`` and ``stop_at`` (those given) to ``exp``."""
    if f.has("ramp"):
        exp.ramp = parse_ramp(f.data["ramp"])
        exp.ramp_applied = 0
        exp.ramp_next_at = step_time(exp.ramp[0]) if exp.ramp else None
    start_given = f.has("start_at")
    if start_given and exp.started_at is not None and f.data["start_at"] is not None:
        raise ValidationError("start_at", f"experiment {exp.key!r} has already started "
                              f"(at {exp.started_at.isoformat()})")
    exp.start_at, exp.stop_at = parse_window(
        f.data.get("start_at"), f.data.get("stop_at"), start_given=start_given, stop_given=f.has("stop_at"),
        start=exp.start_at, stop=exp.stop_at, now=now)


def schedule_view(exp: Experiment) -> dict[str, Any]:
    """``ramp`` (each step with its state: pending, applied with ``applied_at``, or skipped),
    ``start_at`` and ``stop_at`` (ISO, or null)."""
    return {
        "ramp": [{"at": s["at"], "coverage": s["coverage"], "state": s["state"], "applied_at": s["applied_at"]}
                 for s in exp.ramp or ()],
        "start_at": exp.start_at.isoformat() if exp.start_at is not None else None,
        "stop_at": exp.stop_at.isoformat() if exp.stop_at is not None else None,
    }


def advance_ramp(exp: Experiment, now: datetime) -> RampAdvance | None:
    """Apply the latest due step of a running ``exp`` (earlier due ones are skipped): coverage,
    step states and progress change on ``exp``; returns the audit changes, or None when no
    step is due. The caller holds the row lock and bumps the version."""
    steps = [dict(s) for s in exp.ramp or ()]
    done = exp.ramp_applied or 0
    due = [i for i in range(done, len(steps)) if step_time(steps[i]) <= now]
    if exp.status != "running" or not due:
        return None
    last = due[-1]
    for i in due[:-1]:
        steps[i]["state"] = "skipped"
    steps[last]["state"], steps[last]["applied_at"] = "applied", now.isoformat()
    before = exp.coverage
    exp.coverage = steps[last]["coverage"]
    exp.ramp = steps  # a new list, so the JSON column is written
    exp.ramp_applied = last + 1
    exp.ramp_next_at = step_time(steps[last + 1]) if last + 1 < len(steps) else None
    return {"step": last, "at": steps[last]["at"], "steps": len(steps),
            "coverage": {"from": before, "to": exp.coverage},
            **({"skipped": due[:-1]} if len(due) > 1 else {})}
