"""HTTP plumbing shared by the sync and async clients.

Pure functions only (no I/O), so the retry and error-mapping rules are written
once and the two clients cannot drift apart.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ._exceptions import (
    ABTestError,
    APIError,
    InvalidResponseError,
    TimeoutError,
    TransportError,
    api_error_class,
)

__all__ = [
    "Backoff",
    "API_RETRY_STATUSES",
    "auth_headers",
    "parse_retry_after",
    "error_from_response",
    "json_body",
    "parse_result",
    "transport_error",
    "request_not_sent",
    "event_batch_retryable",
]

# assign/infer are retried only where the server certainly did no work:
# 429 and 503 are refusals issued before the request is processed.
API_RETRY_STATUSES = frozenset({429, 503})

_BODY_SNIPPET = 200


def auth_headers(api_key: str, user_agent: str) -> dict[str, str]:
    """Headers sent with every request."""
    return {
        "Authorization": f"Bearer {api_key}",
        "Accept": "application/json",
        "User-Agent": user_agent,
    }


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    Returns ``None`` when absent or unparsable, so the caller falls back to its
    own backoff instead of trusting garbage.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass
class Backoff:
    """Exponential backoff with full jitter, overridden by ``Retry-After``.

    Full jitter (a uniform draw in ``[0, min(cap, base * 2**n)]``) spreads the
    retries of many clients that failed together, so a recovering server is
    not hit by synchronized waves. A server-supplied ``Retry-After`` is obeyed
    as is (clamped to ``max_retry_after``) because the server knows better.
    """

    base: float = 0.1
    cap: float = 10.0
    max_retry_after: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Delay before retry number ``attempt`` (1 for the first retry)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        ceiling = min(self.cap, self.base * (2 ** min(attempt - 1, 62)))
        return self.rng.uniform(0.0, ceiling)


def _snippet(response: httpx.Response) -> str:
    try:
        text = response.text
    except Exception:  # undecodable body: keep the status at least
        text = ""
    text = text.strip()
    return text[:_BODY_SNIPPET] or response.reason_phrase or "no body"


def error_from_response(response: httpx.Response) -> APIError:
    """Map an error response to the most specific :class:`APIError`."""
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    code, message, details, request_id = f"http_{status}", _snippet(response), None, None
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = str(error.get("code") or code)
            message = str(error.get("message") or message)
            details = error.get("details")
        rid = body.get("request_id")
        request_id = str(rid) if rid is not None else None
    if request_id is None:
        request_id = response.headers.get("X-Request-ID")
    cls = api_error_class(status)
    return cls(status, code, message, details, request_id, retry_after)


def json_body(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a success response, or :class:`InvalidResponseError`."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise InvalidResponseError(
            response.status_code, "invalid_response",
            f"expected a JSON object, got: {_snippet(response)}",
        )
    return body


def parse_result(cls: Any, response: httpx.Response) -> Any:
    """Build a result dataclass (``cls.from_dict``) from a success response."""
    body = json_body(response)
    try:
        return cls.from_dict(body)
    except (KeyError, TypeError) as exc:
        raise InvalidResponseError(response.status_code, "invalid_response", str(exc)) from exc


def transport_error(exc: httpx.HTTPError) -> ABTestError:
    """Wrap an httpx transport failure in the SDK's tree (chain it as cause)."""
    if isinstance(exc, httpx.TimeoutException):
        err: ABTestError = TimeoutError(f"request timed out: {exc!r}")
    else:
        err = TransportError(f"transport failure: {exc!r}")
    err.__cause__ = exc
    return err


def request_not_sent(exc: httpx.HTTPError) -> bool:
    """True when the request certainly never reached the server.

    Only then is a non-idempotent call (an inference that costs GPU time and
    records an exposure) safe to retry; a read timeout or a reset connection
    may have happened after the server did the work.
    """
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def event_batch_retryable(status: int) -> bool:
    """Statuses on which an events batch is resent (idempotent by event_id)."""
    return status in (408, 429) or status >= 500
