"""The one place that turns exceptions into HTTP responses: always JSON, never HTML.

Every request has a request id (:func:`request_id`): the client's ``X-Request-Id`` when it is a
short safe token (at most 64 of ``A-Z a-z 0-9 . _ -``), else a new uuid4. The response echoes it
as ``X-Request-Id``; an unhandled exception is logged with it and answered with a generic 500
whose body carries it (``{"error": {...}, "request_id": "..."}``), never the exception's text.

On the OpenAI-compatible paths (:func:`abtest.api.openai.is_openai_path`) every error is in
OpenAI's shape instead (:mod:`abtest.openai.errors`). A path that matches no route answers a
JSON 404 whose ``error`` has both shapes' fields (``code``, ``message``, ``details``, ``type``,
``param``), so abtest's SDK and OpenAI clients both read it.
"""

from __future__ import annotations

import logging
import re
import uuid

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..db import is_outage
from ..errors import ABTestError, ServiceUnavailable
from ..openai.errors import error_body, http_error_body

log = logging.getLogger(__name__)

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type"}
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ENVIRON_KEY = "abtest.request_id"


def request_id() -> str:
    """This request's id: a safe incoming ``X-Request-Id``, else a uuid4 (fixed on first use)."""
    rid = request.environ.get(_ENVIRON_KEY)
    if rid is None:
        incoming = request.headers.get("X-Request-Id", "")
        rid = incoming if _SAFE_REQUEST_ID.fullmatch(incoming) else str(uuid.uuid4())
        request.environ[_ENVIRON_KEY] = rid
    return rid


def _openai() -> bool:
    from .openai import is_openai_path

    return is_openai_path(request.path)


def error_response(exc: ABTestError) -> Response:
    if _openai():
        status, body = error_body(exc)
        response = jsonify(body)
        response.status_code = status
        if exc.request_id is not None:
            response.headers["X-Abtest-Request-Id"] = exc.request_id
    else:
        response = jsonify(exc.to_dict())
        response.status_code = exc.status
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(ABTestError)
    def _abtest(exc: ABTestError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        code = exc.code or 500
        message, details = exc.description or exc.name, None
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        if code == 413 and limit:
            message = (f"the body is larger than the limit of {limit} bytes "
                       "(the setting ABTEST_MAX_BODY_BYTES changes it)")
            details = {"limit_bytes": limit}
        name = _HTTP_CODES.get(code, "http_error")
        if _openai():
            response = jsonify(http_error_body(code, name, message))
        elif code == 404 and request.url_rule is None:  # no such route: both shapes at once
            response = jsonify({"error": {**http_error_body(code, name, f"no route {request.method} "
                                                            f"{request.path}")["error"], "details": None}})
        else:
            response = jsonify({"error": {"code": name, "message": message, "details": details}})
        response.status_code = code
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if is_outage(exc):  # the database went away mid-request: retry later, not a bug
            log.warning("database unavailable during %s %s: %s", request.method, request.path,
                        type(exc).__name__)
            return error_response(ServiceUnavailable("the database is unavailable; retry shortly", retry_after=1))
        rid = request_id()
        log.exception("unhandled error request_id=%s %s %s", rid, request.method, request.path,
                      extra={"request_id": rid})
        message = f"internal server error (request id {rid})"
        response = jsonify({**(http_error_body(500, "internal_error", message) if _openai() else
                               {"error": {"code": "internal_error", "message": message, "details": None}}),
                            "request_id": rid})
        response.status_code = 500
        return response
