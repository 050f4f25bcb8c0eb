"""Event construction, argument checks and batch-acknowledgement rules (no I/O, no threads).

Shared by the threaded and the asyncio clients and pipelines so both validate
events and call arguments the same way and react identically to every server
answer.
"""

from __future__ import annotations

import math
import numbers
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import httpx

from ._http import event_batch_retryable, parse_retry_after

__all__ = ["MAX_BATCH", "ON_FULL_POLICIES", "make_event", "check_text", "check_json", "BatchOutcome",
           "classify_batch_response"]

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
# The server's limit on the nesting of a request body (it answers 400 beyond it).
MAX_DEPTH = 32


def _storable(text: str) -> bool:
    """False for text the server refuses in any string of a request (keys included), because
    no database column can hold it: NUL characters, lone UTF-16 surrogates.

    Checked before sending, here only (both clients use these checks): a bad event found
    by the server could only be counted as rejected, and a refused call is a wasted trip.
    """
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(name: str, value: Any) -> str:
    """``value`` if it is a non-empty string the server accepts for ``name``, else ValueError."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r:.80}")
    if len(value) > MAX_LENGTHS[name]:
        raise ValueError(f"{name} must be at most {MAX_LENGTHS[name]} characters, got {len(value)}")
    if not _storable(value):
        raise ValueError(f"{name} must not contain NUL characters or lone surrogates, got {value!r:.80}")
    return value


def check_json(name: str, value: Any) -> None:
    """ValueError naming the first place in ``value``, a field of a request body (e.g.
    ``attributes['tags'][1]``), that holds a string with NUL or a lone surrogate (keys too),
    a non-finite number, or nesting deeper than the server allows. Iterative, so a cyclic
    value fails instead of looping."""
    stack: list[tuple[str, Any, int]] = [(name, value, 2)]  # the body itself is level 1
    while stack:
        where, item, depth = stack.pop()
        if isinstance(item, str):
            if not _storable(item):
                raise ValueError(f"{where} must not contain NUL characters or lone surrogates, got {item!r:.80}")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{where} must be a finite number, got {item!r:.80}")
        elif isinstance(item, (Mapping, list, tuple)):
            if depth > MAX_DEPTH:
                raise ValueError(f"{where} is nested too deeply (the server allows {MAX_DEPTH} levels in a body)")
            if isinstance(item, Mapping):
                for key in item:
                    if isinstance(key, str) and not _storable(key):
                        raise ValueError(f"{where} keys must not contain NUL characters or lone surrogates, "
                                         f"got {key!r:.80}")
                children = [(f"{where}[{key!r}]", child) for key, child in item.items()]
            else:
                children = [(f"{where}[{i}]", child) for i, child in enumerate(item)]
            stack.extend((w, c, depth + 1) for w, c in reversed(children))


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
        raise ValueError(f"value must be a finite number, got {value!r:.80}")
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "unit_id": check_text("unit_id", unit_id),
        "name": check_text("name", name),
        "value": float(value),
        "timestamp": _timestamp(timestamp),
    }
    if request_id is not None:
        event["request_id"] = check_text("request_id", request_id)
    if experiment is not None:
        event["experiment"] = check_text("experiment", experiment)
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
