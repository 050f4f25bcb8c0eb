"""Event construction and batch-acknowledgement rules (no I/O, no threads).

Shared by the threaded and the asyncio pipelines so both validate events the
same way and react identically to every server answer.
"""

from __future__ import annotations

import math
import numbers
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import httpx

from ._http import event_batch_retryable, parse_retry_after

__all__ = ["MAX_BATCH", "ON_FULL_POLICIES", "make_event", "BatchOutcome", "classify_batch_response"]

# The server's documented per-request limit; larger batches get a 413.
MAX_BATCH = 1000
ON_FULL_POLICIES = ("block", "drop_oldest", "raise")


def _timestamp(value: datetime | str | None) -> str:
    """ISO-8601 UTC string; a naive datetime is refused rather than guessed."""
    if value is None:
        value = datetime.now(timezone.utc)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"timestamp must be ISO-8601, got {value!r}") from None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)  # the server reads naive strings as UTC too
    if not isinstance(value, datetime):
        raise TypeError(f"timestamp must be a datetime or ISO-8601 str, not {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError("timestamp must be timezone-aware (UTC); got a naive datetime")
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# The server's column widths: longer values would be rejected there, one by one.
MAX_LENGTHS = {"unit_id": 200, "name": 100, "request_id": 36, "experiment": 100}


def _non_empty(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > MAX_LENGTHS[name]:
        raise ValueError(f"{name} must be at most {MAX_LENGTHS[name]} characters, got {len(value)}")
    return value


def make_event(
    unit_id: str,
    name: str,
    value: float = 1.0,
    request_id: str | None = None,
    experiment: str | None = None,
    timestamp: datetime | str | None = None,
) -> dict[str, Any]:
    """Validate one event and give it a fresh ``event_id``.

    Validation happens at ``track()`` time, in the caller's thread, because a
    programming error should raise where it was made; a bad event found later
    by the server could only be counted as rejected. The timestamp is taken
    now (not at send time) so buffering does not skew event times.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"value must be a number, not {type(value).__name__}")
    try:
        finite = math.isfinite(float(value))
    except OverflowError:
        finite = False
    if not finite:
        raise ValueError(f"value must be a finite number, got {value!r}")
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "unit_id": _non_empty("unit_id", unit_id),
        "name": _non_empty("name", name),
        "value": float(value),
        "timestamp": _timestamp(timestamp),
    }
    if request_id is not None:
        event["request_id"] = _non_empty("request_id", request_id)
    if experiment is not None:
        event["experiment"] = _non_empty("experiment", experiment)
    return event


@dataclass(frozen=True)
class BatchOutcome:
    """What to do after one POST of an events batch.

    ``ok``: acknowledged (counts filled in); ``retry``: transient, resend the
    same events after a delay; ``split``: too large, resend as two halves;
    ``fatal``: the server refuses the whole batch for good (e.g. bad API key),
    resending cannot help, so the events are counted as dropped.
    """

    kind: Literal["ok", "retry", "split", "fatal"]
    accepted: int = 0
    duplicates: int = 0
    rejected: tuple[tuple[int, str], ...] = ()
    retry_after: float | None = None
    error: str | None = None


def _ack(body: Any) -> BatchOutcome | None:
    if not isinstance(body, dict):
        return None
    accepted, duplicates = body.get("accepted"), body.get("duplicates", 0)
    rejected = body.get("rejected", [])
    if not isinstance(accepted, int) or not isinstance(duplicates, int):
        return None
    if not isinstance(rejected, list):
        return None
    items = tuple(
        (int(r.get("index", -1)), str(r.get("error", ""))) if isinstance(r, dict) else (-1, str(r))
        for r in rejected
    )
    return BatchOutcome("ok", accepted, duplicates, items)


def classify_batch_response(response: httpx.Response) -> BatchOutcome:
    """Decide the fate of one events batch from the server's answer."""
    status = response.status_code
    if 200 <= status < 300:
        try:
            outcome = _ack(response.json())
        except ValueError:
            outcome = None
        # An unreadable acknowledgement is retried: resending is harmless
        # (idempotent by event_id) while guessing the counts is not.
        return outcome or BatchOutcome("retry", error=f"unreadable acknowledgement (HTTP {status})")
    error = f"HTTP {status}: {response.text[:200]!r}"
    if status == 413:
        return BatchOutcome("split", error=error)
    if event_batch_retryable(status):
        return BatchOutcome(
            "retry", retry_after=parse_retry_after(response.headers.get("Retry-After")), error=error
        )
    return BatchOutcome("fatal", error=error)
