"""The one place that turns exceptions into HTTP responses: always JSON, never HTML."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ..db import is_outage
from ..errors import ABTestError, ServiceUnavailable

log = logging.getLogger(__name__)

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type"}


def error_response(exc: ABTestError) -> Response:
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
        response = jsonify({"error": {"code": _HTTP_CODES.get(code, "http_error"),
                                      "message": exc.description or exc.name, "details": None}})
        response.status_code = code
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if is_outage(exc):  # the database went away mid-request: retry later, not a bug
            log.warning("database unavailable during %s %s: %s", request.method, request.path,
                        type(exc).__name__)
            return error_response(ServiceUnavailable("the database is unavailable; retry shortly", retry_after=1))
        log.exception("unhandled error")
        response = jsonify({"error": {"code": "internal_error", "message": "internal server error",
                                      "details": None}})
        response.status_code = 500
        return response
