"""Parse and validate an experiment's schedule: coverage ramp steps, start and stop times.

Payload fields (POST /v1/experiments; PATCH replaces them)::

    "ramp": [{"at": "2026-12-01T10:00:00Z", "coverage": 0.1},
             {"at": "2026-12-02T10:00:00Z", "coverage": 0.5}],
    "start_at": "2026-12-01T09:00:00Z", "stop_at": "2026-12-15T09:00:00Z"

Times are ISO-8601 with a timezone (``Z`` or ``+02:00``; a time without one is ambiguous and
refused) and stored in UTC. Ramp steps come in strictly increasing time order, at most
:data:`MAX_RAMP_STEPS` of them, each with a coverage in [0, 1]. ``stop_at`` must lie after
``start_at`` and neither may be in the past when it is set. No database access here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..errors import ValidationError
from . import Fields

__all__ = ["MAX_RAMP_STEPS", "parse_time", "parse_ramp", "parse_window", "step_time"]

MAX_RAMP_STEPS = 50
_TIME_HELP = "an ISO-8601 time with a timezone, e.g. 2026-12-01T10:00:00Z"


def parse_time(raw: Any, path: str) -> datetime:
    """An ISO-8601 string with a timezone as an aware UTC datetime (422 naming ``path`` otherwise)."""
    if not isinstance(raw, str) or len(raw) > 64:
        raise ValidationError(path, f"must be {_TIME_HELP}")
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError(path, f"{raw!r} is not {_TIME_HELP}") from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValidationError(path, f"{raw!r} has no timezone: give {_TIME_HELP} (Z for UTC)")
    return at.astimezone(timezone.utc)


def step_time(step: dict[str, Any]) -> datetime:
    """The time of a stored ramp step (its ``at`` is a UTC ISO string)."""
    return datetime.fromisoformat(step["at"])


def parse_ramp(raw: Any) -> list[dict[str, Any]]:
    """``ramp`` as stored: ``[{"at": UTC ISO, "coverage": float, "state": "pending",
    "applied_at": None}, ...]`` in time order; null or ``[]``: no schedule."""
    if raw is None:
        return []
    items = Fields({"ramp": raw}, ["ramp"]).list("ramp", max_len=10_000)
    if len(items) > MAX_RAMP_STEPS:
        raise ValidationError("ramp", f"at most {MAX_RAMP_STEPS} steps, got {len(items)}")
    steps: list[dict[str, Any]] = []
    previous: datetime | None = None
    for i, item in enumerate(items):
        path = f"ramp[{i}]"
        s = Fields(item, ["at", "coverage"], path)
        if item.get("at") is None:
            raise ValidationError(f"{path}.at", "is required")
        at = parse_time(item["at"], f"{path}.at")
        if previous is not None and at <= previous:
            raise ValidationError(f"{path}.at", f"must be after ramp[{i - 1}].at ({previous.isoformat()}): "
                                  "steps come in strictly increasing time order")
        previous = at
        coverage = float(s.num("coverage", lo=0.0, hi=1.0))
        steps.append({"at": at.isoformat(), "coverage": coverage, "state": "pending", "applied_at": None})
    return steps


def parse_window(start_raw: Any, stop_raw: Any, *, start_given: bool, stop_given: bool,
                 start: datetime | None, stop: datetime | None, now: datetime) -> tuple[datetime | None, datetime | None]:
    """``(start_at, stop_at)`` after applying the given fields to the current ``start``/``stop``.

    A given field replaces the current value (null clears it); a newly set time must not be in
    the past, and the resulting ``stop_at`` must be after the resulting ``start_at``.
    """
    if start_given:
        start = None if start_raw is None else parse_time(start_raw, "start_at")
        if start is not None and start <= now:
            raise ValidationError("start_at", f"{start.isoformat()} is in the past (now {now.isoformat()}): "
                                  "start the experiment instead, or give a later time")
    if stop_given:
        stop = None if stop_raw is None else parse_time(stop_raw, "stop_at")
        if stop is not None and stop <= now:
            raise ValidationError("stop_at", f"{stop.isoformat()} is in the past (now {now.isoformat()})")
    if start is not None and stop is not None and stop <= start:
        if stop_given:
            raise ValidationError("stop_at", f"must be after start_at ({start.isoformat()})")
        raise ValidationError("start_at", f"must be before stop_at ({stop.isoformat()})")
    return start, stop
