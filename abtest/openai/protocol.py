"""The OpenAI wire format: request models that validate themselves, response and chunk builders.

No Flask and no service here. :meth:`ChatCompletionRequest.parse` and
:meth:`CompletionRequest.parse` read a JSON body and raise
:class:`~abtest.errors.ValidationError` naming the field (``messages[1].role``), which the
OpenAI routes answer as ``400 {"error": {"message", "type", "param", "code"}}``;
:meth:`to_params` gives the engine parameters (:class:`~abtest.services.inference.InferParams`).
The builders turn a served result into a ``chat.completion`` / ``text_completion`` object
or their streamed chunks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationError
from ..services.inference import InferParams
from ..validation import TEXT_ERROR, Fields, check_json, storable

__all__ = ["ChatCompletionRequest", "CompletionRequest", "ROLES", "MAX_TOKENS", "MAX_PROMPT_CHARS",
           "completion_body", "chunk", "usage", "sse", "DONE"]

ROLES = ("system", "developer", "user", "assistant")
MAX_TOKENS = 1024
MAX_PROMPT_CHARS = 32_768
DEFAULT_MAX_TOKENS = 128
_COMMON = ("model", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream", "stream_options",
           "user", "metadata")
CHAT_FIELDS = (*_COMMON, "messages", "max_completion_tokens")
COMPLETION_FIELDS = (*_COMMON, "prompt")
DONE = "data: [DONE]\n\n"


def _unknown_field(data: Any, allowed: tuple[str, ...]) -> None:
    """OpenAI's wording for a field it does not know, naming it as ``param``."""
    if isinstance(data, Mapping):
        for key in sorted(set(data) - set(allowed)):
            if isinstance(key, str) and storable(key):
                raise ValidationError(key, f"unrecognized request argument supplied: {key}")


@dataclass(frozen=True)
class _Sampling:
    model: str
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    user: str | None
    metadata: dict[str, str]

    @staticmethod
    def read(f: Fields, max_tokens_keys: tuple[str, ...]) -> dict[str, Any]:
        model = f.str("model", max_len=100)
        max_tokens = DEFAULT_MAX_TOKENS
        for key in max_tokens_keys:
            if f.has(key) and f.data[key] is not None:
                max_tokens = f.num(key, lo=1, hi=MAX_TOKENS, integer=True)
        n = f.num("n", 1, integer=True)
        if n != 1:
            raise ValidationError("n", "only n = 1 is supported (one choice per request)")
        stream = f.bool("stream", False)
        options = Fields(f.obj("stream_options", {}), ("include_usage",), "stream_options")
        if f.has("stream_options") and f.data["stream_options"] is not None and not stream:
            raise ValidationError("stream_options", "is only allowed when stream is true")
        stop = f.data.get("stop")
        stops = [stop] if isinstance(stop, str) else f.list("stop", [], max_len=4)
        for i, s in enumerate(stops):
            where = "stop" if isinstance(stop, str) else f"stop[{i}]"
            if not isinstance(s, str) or not s or len(s) > 100:
                raise ValidationError(where, "must be a non-empty string of at most 100 characters")
            if not storable(s):
                raise ValidationError(where, TEXT_ERROR)
        user = f.str("user", None, max_len=200)
        metadata = dict(f.obj("metadata", {}))
        if len(metadata) > 16 or not all(isinstance(v, str) for v in metadata.values()):
            raise ValidationError("metadata", "must be an object of at most 16 string values")
        check_json(metadata, "metadata", max_len=512)
        return dict(model=model, max_tokens=max_tokens,
                    temperature=float(f.num("temperature", 1.0, lo=0.0, hi=2.0)),
                    top_p=float(f.num("top_p", 1.0, lo=1e-6, hi=1.0)),
                    seed=f.num("seed", None, lo=0, hi=2**63 - 1, integer=True), stop=tuple(stops),
                    stream=stream, include_usage=options.bool("include_usage", False), user=user,
                    metadata=metadata)

    def params(self, prompt: str) -> InferParams:
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ValidationError(self._prompt_param, f"at most {MAX_PROMPT_CHARS} characters (got {len(prompt)})",
                                  code="context_length_exceeded")
        return InferParams(prompt=prompt, max_new_tokens=self.max_tokens, temperature=self.temperature,
                           top_p=self.top_p, seed=self.seed, stop=self.stop)

    _prompt_param = "prompt"


@dataclass(frozen=True)
class ChatCompletionRequest(_Sampling):
    messages: tuple[dict[str, str], ...] = ()
    _prompt_param = "messages"

    @classmethod
    def parse(cls, body: Any) -> "ChatCompletionRequest":
        _unknown_field(body, CHAT_FIELDS)
        f = Fields(body, CHAT_FIELDS)
        raw = f.list("messages", max_len=256)
        if not raw:
            raise ValidationError("messages", "must be a non-empty list of messages")
        return cls(**cls.read(f, ("max_tokens", "max_completion_tokens")),
                   messages=tuple(_message(m, i) for i, m in enumerate(raw)))

    def to_params(self, render: Any) -> InferParams:
        """``render(messages) -> str``: the engine's chat template (:mod:`abtest.openai.templates`)."""
        return self.params(render(self.messages))


@dataclass(frozen=True)
class CompletionRequest(_Sampling):
    prompt: str = ""

    @classmethod
    def parse(cls, body: Any) -> "CompletionRequest":
        _unknown_field(body, COMPLETION_FIELDS)
        f = Fields(body, COMPLETION_FIELDS)
        prompt = f.data.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ValidationError("prompt", "must be a non-empty string (one prompt per request)")
        if not storable(prompt):
            raise ValidationError("prompt", TEXT_ERROR)
        return cls(**cls.read(f, ("max_tokens",)), prompt=prompt)

    def to_params(self) -> InferParams:
        return self.params(self.prompt)


def _message(raw: Any, i: int) -> dict[str, str]:
    where = f"messages[{i}]"
    f = Fields(raw, ("role", "content", "name"), where)
    role = f.data.get("role")
    if role not in ROLES:
        shown = role if isinstance(role, str) and storable(role) and len(role) <= 40 else type(role).__name__
        raise ValidationError(f"{where}.role", f"unknown role {shown!r}: must be one of {', '.join(ROLES)}")
    content = f.data.get("content")
    if isinstance(content, list):  # content parts: text only
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, Mapping) and part.get("type") != "text":
                raise ValidationError(f"{where}.content[{j}].type", "only text content parts are supported")
            p = Fields(part, ("type", "text"), f"{where}.content[{j}]")
            texts.append(p.str("text", max_len=MAX_PROMPT_CHARS, nonempty=False))
        content = "".join(texts)
    if not isinstance(content, str):
        raise ValidationError(f"{where}.content", "must be a string or a list of text parts")
    if not storable(content):
        raise ValidationError(f"{where}.content", TEXT_ERROR)
    f.str("name", None, max_len=64)
    return {"role": role, "content": content}


# --- responses -------------------------------------------------------------------------------

def usage(result: Mapping[str, Any]) -> dict[str, int]:
    p, c = int(result["prompt_tokens"]), int(result["completion_tokens"])
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def finish_reason(result: Mapping[str, Any]) -> str:
    return "length" if result.get("finish_reason") == "length" else "stop"


def completion_body(chat: bool, rid: str, model: str, created: int, result: Mapping[str, Any]) -> dict[str, Any]:
    """A whole ``chat.completion`` (``chat``) or ``text_completion`` object."""
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": result["text"]},
                                  "logprobs": None, "finish_reason": finish_reason(result)}
    else:
        choice = {"index": 0, "text": result["text"], "logprobs": None, "finish_reason": finish_reason(result)}
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": model, "choices": [choice], "usage": usage(result), "system_fingerprint": None}


def chunk(chat: bool, rid: str, model: str, created: int, *, delta: str | None = None, role: bool = False,
          finish: str | None = None, usage_of: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One streamed chunk: a text delta, the opening role, a finish reason, or (``usage_of``)
    the final usage chunk, whose ``choices`` is empty."""
    body: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                            "created": created, "model": model, "system_fingerprint": None}
    if usage_of is not None:
        body.update(choices=[], usage=usage(usage_of))
        return body
    if chat:
        d: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if delta is not None:
            d["content"] = delta
        choice: dict[str, Any] = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
    body["choices"] = [choice]
    return body


def sse(obj: Mapping[str, Any]) -> str:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"
