"""Typed results returned by the SDK.

Results are frozen dataclasses built from the server's JSON so callers get
attribute access, type hints and equality instead of raw dicts. ``raw`` keeps
the full document: fields a newer server adds are not lost, only untyped.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

__all__ = ["AssignResult", "InferResult", "ClientStats"]


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    """Instantiate ``cls`` from ``data``; raises KeyError/TypeError on a bad shape."""
    names = [f.name for f in fields(cls) if f.name != "raw"]
    missing = [n for n in names if n not in data]
    if missing:
        raise KeyError(f"missing fields {missing}")
    return cls(**{n: data[n] for n in names}, raw=dict(data))


@dataclass(frozen=True)
class AssignResult:
    """Outcome of ``POST /v1/assign``: which variant serves this unit."""

    experiment: str
    variant: str | None
    engine: str | None
    in_experiment: bool
    reason: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AssignResult":
        return _build(cls, data)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class InferResult:
    """Outcome of ``POST /v1/infer``: the generated text and its measurements.

    Keep ``request_id``: passing it to ``track(..., request_id=...)`` ties a
    later conversion to this exact inference (and its variant).
    """

    request_id: str
    experiment: str
    variant: str | None
    engine: str | None
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    queue_ms: float | None
    batch_size: int | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InferResult":
        return _build(cls, data)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ClientStats:
    """A consistent snapshot of the event pipeline's counters.

    Every tracked event ends in exactly one of ``sent`` (stored as new),
    ``duplicates`` (the server already had its ``event_id``: a resend after a
    lost acknowledgement, never a double count), ``rejected`` (the server
    refused it as bad data) or ``dropped`` (never delivered: buffer overflow,
    a non-retryable batch error, or still undelivered at ``close()``'s
    deadline); until then it is ``pending``. Hence, at any instant::

        tracked == sent + duplicates + rejected + dropped + pending

    ``retries`` counts event-batch resends; ``api_retries`` counts retried
    ``assign``/``infer`` calls.
    """

    tracked: int = 0
    sent: int = 0
    duplicates: int = 0
    rejected: int = 0
    dropped: int = 0
    pending: int = 0
    retries: int = 0
    api_retries: int = 0
    batches: int = 0
    last_error: str | None = None
