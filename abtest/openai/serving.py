"""Serving the OpenAI endpoints: a parsed request in, a response object or a stream of SSE out.

No Flask here (``abtest.api.openai`` only turns an :class:`Answer` into HTTP). ``model`` is an
experiment key (the unit's variant chooses the engine, exactly as /v1/infer: exposure,
outcome row, rollups, guardrails, quality sampling) or, for an ``admin`` key, an engine name
(called directly, outside any experiment: its row has no experiment). The unit is the body's
``user`` or the ``X-Abtest-Unit`` header; a request into an experiment with neither is a 400;
``metadata`` is the unit's targeting attributes.

A streamed answer is a generator of SSE strings: the opening chunk (chat: the role), one
chunk per piece of decoded text, one with the ``finish_reason``, the usage chunk when
``stream_options.include_usage`` asked for it, then ``data: [DONE]``. An error after the
stream began is one last ``data: {"error": ...}`` frame before ``[DONE]``; idle streams get
``: keep-alive`` comments. Closing the generator early (the client went away) cancels the
request: it leaves its batch at the next decode step and its row says ``cancelled``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from ..container import Services
from ..errors import ABTestError, Forbidden, NotFound, ValidationError
from ..evaluator import Assignment, ExperimentConfig
from ..models import Experiment
from ..services.keys import Principal
from ..services.streaming import StreamedRequest, open_stream
from ..validation.experiments import segment_levels
from .errors import error_body
from .protocol import DONE, ChatCompletionRequest, CompletionRequest, chunk, completion_body, finish_reason, sse
from .templates import Templates

__all__ = ["OpenAIServing", "Answer"]

Request = ChatCompletionRequest | CompletionRequest


@dataclass
class Answer:
    """A JSON ``body`` or an SSE ``stream``, with the ``X-Abtest-*`` headers."""

    body: dict[str, Any] | None = None
    stream: Iterator[str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class OpenAIServing:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.templates = Templates(self._checkpoint)

    # --- models ---------------------------------------------------------------------------

    def models(self, principal: Principal) -> dict[str, Any]:
        """The running experiments, and the engines when the key may call them directly."""
        with self.services.db.session() as session:
            rows = session.execute(select(Experiment.key, Experiment.started_at)
                                   .where(Experiment.status == "running").order_by(Experiment.key)).all()
        data = [{"id": key, "object": "model", "created": int(started.timestamp()) if started else 0,
                 "owned_by": "abtest-experiment"} for key, started in rows]
        if principal.allows("admin"):
            data += [{"id": name, "object": "model", "created": 0, "owned_by": "abtest-engine"}
                     for name in sorted(self._registry())]
        return {"object": "list", "data": data}

    # --- completions ----------------------------------------------------------------------

    def complete(self, req: Request, unit: str | None, principal: Principal, arrived: float) -> Answer:
        chat = isinstance(req, ChatCompletionRequest)
        assignment, config = self._resolve(req.model, unit or req.user, req.metadata, principal)
        params = (req.to_params(self._renderer(assignment.engine)) if isinstance(req, ChatCompletionRequest)
                  else req.to_params())
        unit_id = unit or req.user or "direct"
        inference = self.services.inference
        created = int(time.time())
        try:
            if not req.stream:
                segments = segment_levels(list(config.dimensions), req.metadata) if config is not None else None
                body, result = inference.serve(assignment, config, unit_id, params, arrived, segments)
                rid = body["request_id"]
                return Answer(body=completion_body(chat, _object_id(chat, rid), req.model, created, result),
                              headers=_headers(rid, assignment, config))
            served = open_stream(inference, assignment, config, unit_id, params, arrived)
        except ValidationError as exc:
            raise _context(exc, "messages" if chat else "prompt") from None
        return Answer(stream=_sse(served, chat, req.model, created, req.include_usage),
                      headers=_headers(served.request_id, assignment, config))

    def _resolve(self, model: str, unit: str | None, attributes: Mapping[str, Any],
                 principal: Principal) -> tuple[Assignment, ExperimentConfig | None]:
        try:
            self.services.configs.get(model)
        except NotFound:
            if model not in self._registry():
                raise ValidationError("model", f"unknown model {model!r}: not an experiment key or an engine "
                                      "(GET /v1/models lists them)", code="model_not_found") from None
            if not principal.allows("admin"):
                raise Forbidden(f"calling engine {model!r} directly needs an admin key; sdk keys call "
                                "experiments", details={"field": "model"}) from None
            return Assignment(model, "", model, False, "direct"), None
        if not unit:
            raise ValidationError("user", "a request into an experiment needs its unit: the 'user' field "
                                  "or the X-Abtest-Unit header")
        if len(unit) > 200:
            raise ValidationError("user", "must be at most 200 characters")
        return self.services.assigner.assign(model, unit, attributes, record=False)

    def _renderer(self, engine: str):  # type: ignore[no-untyped-def]
        render = self.templates.renderer(engine)

        def safe(messages: Any) -> str:
            try:
                return render(messages)
            except Exception as exc:  # noqa: BLE001 - a template refusing a conversation is the input's
                raise ValidationError("messages", f"the chat template of engine {engine!r} refused them: "
                                      f"{_template_reason(exc)}") from None

        return safe

    def _registry(self) -> dict[str, Any]:
        return self.services.is_engine.specs()

    def _checkpoint(self, engine: str) -> str | None:
        spec = self._registry().get(engine)
        return str(spec.checkpoint) if spec is not None else None


def _sse(served: StreamedRequest, chat: bool, model: str, created: int, include_usage: bool) -> Iterator[str]:
    oid = _object_id(chat, served.request_id)
    try:
        if chat:
            yield sse(chunk(chat, oid, model, created, role=True))
        for kind, value in served.events():
            if kind == "text":
                yield sse(chunk(chat, oid, model, created, delta=value))
            elif kind == "keepalive":
                yield ": keep-alive\n\n"
            else:
                yield sse(chunk(chat, oid, model, created, delta="" if chat else None, finish=finish_reason(value)))
                if include_usage:
                    yield sse(chunk(chat, oid, model, created, usage_of=value))
        yield DONE
    except ABTestError as exc:  # after the status line: the error is the stream's last frame
        yield sse(error_body(exc)[1])
        yield DONE
    finally:
        served.close()  # a client that went away: the request is cancelled


def _object_id(chat: bool, request_id: str) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"


def _headers(request_id: str, assignment: Assignment, config: ExperimentConfig | None) -> dict[str, str]:
    headers = {"X-Abtest-Request-Id": request_id, "X-Abtest-Engine": assignment.engine}
    if config is not None:
        headers["X-Abtest-Variant"] = assignment.variant
        headers["X-Abtest-Experiment"] = assignment.experiment
    return headers


def _context(exc: ValidationError, param: str) -> ValidationError:
    """The engine's context-window refusal in OpenAI's terms (its row is written already)."""
    if exc.code != "prompt_too_long":
        return exc
    out = ValidationError(param, exc.message.split(": ", 1)[-1], code="context_length_exceeded",
                          request_id=exc.request_id)
    return out


def _template_reason(exc: Exception) -> str:
    text = str(getattr(exc, "message", "") or "")
    return text[:200] if text and "/" not in text else type(exc).__name__
