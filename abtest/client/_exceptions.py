"""Exceptions raised by the abtest client SDK.

Every exception the SDK raises on purpose derives from :class:`ABTestError`,
so ``except ABTestError`` is enough to catch them all. The tree::

    ABTestError
    ├── APIError                    the server answered with an error status
    │   ├── ClientError             4xx: the request is wrong; retrying will not help
    │   │   ├── BadRequestError         400, 422
    │   │   ├── AuthenticationError     401
    │   │   ├── PermissionDeniedError   403
    │   │   ├── NotFoundError           404
    │   │   ├── PayloadTooLargeError    413
    │   │   └── RateLimitError          429 (carries ``retry_after``)
    │   ├── ServerError             5xx: the server or an engine failed
    │   │   ├── EngineError             502 (inference engine failure)
    │   │   ├── ServiceUnavailableError 503 (carries ``retry_after``)
    │   │   └── GatewayTimeoutError     504 (inference took too long)
    │   └── InvalidResponseError    2xx whose body is not the documented JSON
    ├── TransportError              no usable HTTP response (connect/read failure)
    ├── TimeoutError                the client-side timeout expired
    ├── BufferFullError             ``track()`` with ``on_full="raise"`` and a full buffer
    └── ClientClosedError           the client was used after ``close()``

``TimeoutError`` deliberately shadows the builtin inside this package, the way
httpx names its own timeout exceptions; import it qualified
(``abtest.client.TimeoutError``) to avoid confusion. A 504 from the server is
an :class:`APIError` (the server timed out), not a :class:`TimeoutError` (the
client gave up waiting).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ABTestError",
    "APIError",
    "ClientError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitError",
    "ServerError",
    "EngineError",
    "ServiceUnavailableError",
    "GatewayTimeoutError",
    "InvalidResponseError",
    "TransportError",
    "TimeoutError",
    "BufferFullError",
    "ClientClosedError",
    "api_error_class",
]


class ABTestError(Exception):
    """Base class of every error raised by the SDK."""


class APIError(ABTestError):
    """The server returned an error response.

    ``code``, ``message`` and ``details`` come from the server's error body
    ``{"error": {"code", "message", "details"}}``; when the body is not in that
    shape (a proxy's HTML page, an empty body) ``code`` is ``"http_<status>"``
    and ``message`` holds the start of the raw body, so nothing is hidden.
    ``request_id`` is set for inference failures (502/504) so they can be
    looked up in the server's logs.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.status} {self.code}: {self.message}"
        if self.request_id:
            text += f" (request_id={self.request_id})"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the exception picklable (e.g. across process pools) despite
        # the multi-argument constructor.
        return (
            type(self),
            (self.status, self.code, self.message, self.details,
             self.request_id, self.retry_after),
        )


class ClientError(APIError):
    """4xx: the request was refused; sending it again unchanged will fail again."""


class BadRequestError(ClientError):
    """400/422: malformed or invalid request."""


class AuthenticationError(ClientError):
    """401: missing or wrong API key."""


class PermissionDeniedError(ClientError):
    """403: the key is valid but not allowed to do this."""


class NotFoundError(ClientError):
    """404: unknown experiment or route."""


class PayloadTooLargeError(ClientError):
    """413: the events batch exceeds the server's limit."""


class RateLimitError(ClientError):
    """429: too many requests; ``retry_after`` holds the server's hint (s)."""


class ServerError(APIError):
    """5xx: the server failed."""


class EngineError(ServerError):
    """502: the inference engine failed; see ``request_id``."""


class ServiceUnavailableError(ServerError):
    """503: overloaded or starting; ``retry_after`` holds the server's hint (s)."""


class GatewayTimeoutError(ServerError):
    """504: inference exceeded the server's deadline; see ``request_id``."""


class InvalidResponseError(APIError):
    """A success status whose body is not the documented JSON document."""


class TransportError(ABTestError):
    """The request got no usable HTTP response (refused, reset, DNS, TLS...).

    The underlying httpx exception is chained as ``__cause__``.
    """


class TimeoutError(ABTestError):  # noqa: A001 - httpx-style name, documented above
    """The client-side timeout expired before a response arrived."""


class BufferFullError(ABTestError):
    """The event buffer is full and the client was built with ``on_full="raise"``."""


class ClientClosedError(ABTestError):
    """The client was used after ``close()``."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    429: RateLimitError,
    502: EngineError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def api_error_class(status: int) -> type[APIError]:
    """The most specific :class:`APIError` subclass for an HTTP status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 400 <= status < 500:
        return ClientError
    if status >= 500:
        return ServerError
    return APIError


class DefinitionsUnavailableError(ABTestError):
    """``evaluation="local"`` with ``on_unavailable="raise"``: no definitions could be loaded yet."""


__all__ += ["DefinitionsUnavailableError"]
