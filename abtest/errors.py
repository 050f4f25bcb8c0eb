"""The service's one exception tree. ``abtest.api.errors`` is the one place that maps it to HTTP.

    ABTestError                  500 internal_error
    ├── BadRequest               400 bad_request        (malformed JSON, unreadable body)
    ├── ValidationError          422 validation_error   (a field is missing, unknown or invalid)
    ├── Unauthorized             401 unauthorized
    ├── Forbidden                403 forbidden
    ├── NotFound                 404 not_found
    ├── Conflict                 409 conflict           (duplicate key, illegal status transition)
    ├── PayloadTooLarge          413 payload_too_large
    ├── RateLimited              429 rate_limited       (carries retry_after)
    ├── ServiceUnavailable       503 service_unavailable (carries retry_after)
    ├── UpstreamError            502 engine_error       (the engine failed the request)
    └── UpstreamTimeout          504 engine_timeout

Errors carry a machine-readable ``code``, a human ``message`` and optional ``details``
(for validation errors: ``{"field": "variants[1].weight"}``). Service code raises these and
never builds HTTP responses itself.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ABTestError",
    "BadRequest",
    "ValidationError",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceUnavailable",
    "UpstreamError",
    "UpstreamTimeout",
]


class ABTestError(Exception):
    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.retry_after = retry_after
        self.request_id = request_id
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "error": {"code": self.code, "message": self.message, "details": self.details}
        }
        if self.request_id is not None:
            body["request_id"] = self.request_id
        return body


class BadRequest(ABTestError):
    status, code = 400, "bad_request"


class ValidationError(ABTestError):
    status, code = 422, "validation_error"

    def __init__(self, field: str, message: str, **kwargs: Any) -> None:
        details = {"field": field, **(kwargs.pop("details", None) or {})}
        super().__init__(f"{field}: {message}", details=details, **kwargs)
        self.field = field


class Unauthorized(ABTestError):
    status, code = 401, "unauthorized"


class Forbidden(ABTestError):
    status, code = 403, "forbidden"


class NotFound(ABTestError):
    status, code = 404, "not_found"


class Conflict(ABTestError):
    status, code = 409, "conflict"


class PayloadTooLarge(ABTestError):
    status, code = 413, "payload_too_large"


class RateLimited(ABTestError):
    status, code = 429, "rate_limited"


class ServiceUnavailable(ABTestError):
    status, code = 503, "service_unavailable"


class UpstreamError(ABTestError):
    status, code = 502, "engine_error"


class UpstreamTimeout(ABTestError):
    status, code = 504, "engine_timeout"
