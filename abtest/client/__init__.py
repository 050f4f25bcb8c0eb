"""Python client SDK for the abtest service.

Importable without the server's dependencies (Flask, SQLAlchemy, torch): it
needs only httpx. Typical use::

    from abtest.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        result = client.infer("checkout-copy", unit_id="user-42", prompt="Hello")
        client.track("user-42", "purchase", value=19.99, request_id=result.request_id)
    # leaving the block flushes every tracked event

See :class:`Client` for batching, retries and the buffer-full policy, and
``abtest.client._exceptions`` for the exception tree.
"""

from ._async import AsyncClient
from ._client import Client
from ._exceptions import (
    ABTestError,
    APIError,
    AuthenticationError,
    BadRequestError,
    BufferFullError,
    ClientClosedError,
    ClientError,
    EngineError,
    GatewayTimeoutError,
    InvalidResponseError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    TimeoutError,
    TransportError,
)
from ._exceptions import DefinitionsUnavailableError
from ._models import AssignResult, ClientStats, InferResult

__all__ = [
    "Client",
    "AsyncClient",
    "AssignResult",
    "InferResult",
    "ClientStats",
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
    "DefinitionsUnavailableError",
]
