"""OpenAI-compatible routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models.

Only HTTP here: authenticate (an ``sdk`` key, as /v1/infer), parse the body into the protocol
model (:mod:`abtest.openai.protocol`), hand it to :class:`abtest.openai.serving.OpenAIServing`
and turn its :class:`~abtest.openai.serving.Answer` into a JSON or ``text/event-stream``
response. Errors on these paths are in OpenAI's shape (:func:`is_openai_path`, used by
:mod:`abtest.api.errors`).
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from ..openai.protocol import ChatCompletionRequest, CompletionRequest
from ..openai.serving import Answer, OpenAIServing
from .common import authenticate, json_body, services
from .gate import arrived

__all__ = ["bp", "is_openai_path", "OPENAI_PATHS"]

bp = Blueprint("openai", __name__, url_prefix="/v1")
OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models")
_KEY = "abtest.openai"


def is_openai_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPENAI_PATHS)


def serving() -> OpenAIServing:
    app: Flask = current_app
    found = app.extensions.get(_KEY)
    if found is None:
        found = app.extensions[_KEY] = OpenAIServing(services())
    return found


@bp.get("/models")
def models() -> Response:
    return jsonify(serving().models(authenticate("sdk")))


@bp.post("/chat/completions")
def chat_completions() -> Response:
    principal = authenticate("sdk")
    return _respond(serving().complete(ChatCompletionRequest.parse(json_body()), _unit(), principal, arrived()))


@bp.post("/completions")
def completions() -> Response:
    principal = authenticate("sdk")
    return _respond(serving().complete(CompletionRequest.parse(json_body()), _unit(), principal, arrived()))


def _unit() -> str | None:
    return request.headers.get("X-Abtest-Unit") or None


def _respond(answer: Answer) -> Response:
    if answer.stream is not None:
        response = Response(answer.stream, mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"  # proxies: pass each event on at once
    else:
        response = jsonify(answer.body)
    response.headers.update(answer.headers)
    return response
