"""Request/result types and errors shared by the engines and the service (no torch here)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "EngineError",
    "InvalidRequest",
    "PromptTooLong",
    "Overloaded",
    "EngineClosed",
    "ScoreResult",
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
    # The completion's token ids as generated (the end-of-text token included when it was
    # chosen): what a quality reference scores, since decoding then re-encoding the text can
    # tokenize it differently.
    token_ids: tuple[int, ...] = ()


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


@dataclass(frozen=True)
class ScoreResult:
    """A completion scored teacher-forced after its prompt (``Engine.score``).

    ``token_ids``: the completion as this engine's tokenizer encodes it; ``logprobs``: for each of
    those positions the engine's log-softmax over its vocabulary, row-major float32 bytes
    (``len(token_ids) x vocab_size``); ``tokenizer``: a fingerprint of the tokenizer (two engines
    with the same fingerprint encode every text to the same ids). ``truncated``: the completion
    was cut to fit the context window.
    """

    token_ids: tuple[int, ...]
    logprobs: bytes
    vocab_size: int
    tokenizer: str
    prompt_tokens: int
    truncated: bool = False
    prompt_ids: tuple[int, ...] = ()  # the prompt as encoded (another engine can score the same ids)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the log-probabilities base64-encoded), as a dispatched reply carries it."""
        return {"token_ids": list(self.token_ids), "logprobs": base64.b64encode(self.logprobs).decode("ascii"),
                "vocab_size": self.vocab_size, "tokenizer": self.tokenizer,
                "prompt_tokens": self.prompt_tokens, "truncated": self.truncated,
                "prompt_ids": list(self.prompt_ids)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScoreResult":
        return cls(token_ids=tuple(int(t) for t in d["token_ids"]), logprobs=base64.b64decode(d["logprobs"]),
                   vocab_size=int(d["vocab_size"]), tokenizer=str(d["tokenizer"]),
                   prompt_tokens=int(d["prompt_tokens"]), truncated=bool(d.get("truncated", False)),
                   prompt_ids=tuple(int(t) for t in d.get("prompt_ids") or ()))
