"""OpenAI's error shape for the exception tree of :mod:`abtest.errors`: ``(status, body)``.

``{"error": {"message", "type", "param", "code"}}`` with the statuses of /v1/infer, except
that a field that fails validation (422 on abtest's own routes) is a 400 here, as OpenAI
clients expect; ``param`` is the field's path. The statuses drive the OpenAI SDKs' retries
(429 and 5xx, honouring ``Retry-After``, which the HTTP layer sets).
"""

from __future__ import annotations

from typing import Any

from ..errors import ABTestError, ValidationError

__all__ = ["error_body", "http_error_body", "TYPES"]

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 409: "invalid_request_error",
         413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
         429: "rate_limit_error"}


def _type(status: int) -> str:
    return TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(exc: ABTestError) -> tuple[int, dict[str, Any]]:
    status = 400 if isinstance(exc, ValidationError) else exc.status
    details = exc.details or {}
    code = "invalid_value" if exc.code == "validation_error" else exc.code
    body: dict[str, Any] = {"error": {"message": exc.message, "type": _type(status), "param": details.get("field"),
                                      "code": code}}
    if exc.request_id is not None:
        body["request_id"] = exc.request_id
    return status, body


def http_error_body(status: int, code: str, message: str) -> dict[str, Any]:
    """A routing or protocol error (unknown route, wrong method, body too large)."""
    return {"error": {"message": message, "type": _type(status), "param": None, "code": code}}
