"""Request/result types and errors shared by the engines and the service (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "EngineError",
    "InvalidRequest",
    "PromptTooLong",
    "Overloaded",
    "EngineClosed",
]


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None  # sampling seed; None draws from the engine's own generator
    stop: tuple[str, ...] = ()  # generation ends before the first occurrence of any of these
    request_id: str | None = None


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float  # from submit() to the start of the batch that ran it (0 when called directly)
    ttft_ms: float  # from the start of the batch to this request's first token
    decode_ms: float  # from the first token to this request's last token
    total_ms: float  # queue_ms + time in the batch until this request finished
    batch_size: int  # how many requests ran together in the batch
    finish_reason: str  # "stop" | "length"
    request_id: str | None = None
    # This request's share of the engine time of the steps it ran in: each step's time divided
    # by the rows generating in that step, summed (prefill shared by the batch's rows).
    compute_ms: float | None = None


class EngineError(Exception):
    """Base of all engine errors: has a machine-readable ``code`` and a message."""

    code = "engine_error"

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message

    def __reduce__(self):  # picklable across processes (Celery)
        return (type(self), (self.message,))


class InvalidRequest(EngineError):
    code = "invalid_request"


class PromptTooLong(InvalidRequest):
    code = "prompt_too_long"


class Overloaded(EngineError):
    code = "overloaded"


class EngineClosed(EngineError):
    code = "engine_closed"
