"""The synchronous, thread-safe ``Client``."""

from __future__ import annotations

import random
import time
import weakref
from functools import partial
from datetime import datetime
from types import TracebackType
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote

import httpx

from . import _http
from ._events import MAX_BATCH, ON_FULL_POLICIES, check_json, check_text, make_event
from ._exceptions import ClientClosedError
from ._models import AssignResult, ClientStats, InferResult
from ._pipeline import EventPipeline

__all__ = ["Client", "assign_payload", "infer_payload", "check_event_options"]

USER_AGENT = "abtest-python-client/0.1"


def check_event_options(batch_size: int, flush_interval: float, max_buffer: int, on_full: str) -> None:
    """Validate the event-pipeline settings shared by both clients."""
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be in 1..{MAX_BATCH} (the server's limit), got {batch_size}")
    if flush_interval <= 0:
        raise ValueError(f"flush_interval must be > 0, got {flush_interval}")
    if max_buffer < batch_size:
        raise ValueError(f"max_buffer ({max_buffer}) must be >= batch_size ({batch_size})")
    if on_full not in ON_FULL_POLICIES:
        raise ValueError(f"on_full must be one of {ON_FULL_POLICIES}, got {on_full!r}")


def assign_payload(experiment: str, unit_id: str, attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Body of ``POST /v1/assign``, checked before sending: ValueError names the bad argument."""
    body: dict[str, Any] = {"experiment": check_text("experiment", experiment),
                            "unit_id": check_text("unit_id", unit_id)}
    if attributes is not None:
        body["attributes"] = dict(attributes)
        check_json("attributes", body["attributes"])
    return body


def infer_payload(
    experiment: str, unit_id: str, prompt: str, attributes: Mapping[str, Any] | None, **params: Any
) -> dict[str, Any]:
    """Body of ``POST /v1/infer``, checked like :func:`assign_payload`; unset
    optional parameters are omitted so the server's defaults apply."""
    body = assign_payload(experiment, unit_id, attributes)
    body["prompt"] = prompt
    body.update({k: v for k, v in params.items() if v is not None})
    for name in ("prompt", *params):
        check_json(name, body.get(name))  # NUL / lone surrogates (prompt, stop), NaN (temperature...)
    return body


def _post_events(
    http: httpx.Client, headers: dict[str, str], events: list[dict[str, Any]], timeout: float
) -> httpx.Response:
    """POST one events batch. A module-level function (bound with partial)
    rather than a method, so the sender thread holds no reference to the
    client and an abandoned client can still be garbage-collected."""
    return http.post("/v1/events", json={"events": events}, headers=headers, timeout=timeout)


def _shutdown(pipeline: EventPipeline, http: httpx.Client, owns_http: bool, timeout: float) -> None:
    """Finalizer: runs at ``close()``, at GC of the client, or at interpreter exit.

    Module-level and given only the pipeline and transport (never the client)
    so the registered finalizer does not keep the client alive.
    """
    pipeline.close(timeout)
    if owns_http:
        http.close()


class Client:
    """Client for the abtest HTTP API.

    Safe to share between threads (one instance per process is the intended
    use). ``track()`` never performs I/O: events are buffered and a background
    thread sends them in batches of ``batch_size`` or every ``flush_interval``
    seconds, retrying transient failures with exponential backoff and full
    jitter (resending the same ``event_id``s, which the server deduplicates)
    until delivered or until ``close()``'s deadline.

    Buffer-full policy (``on_full``), applied when ``max_buffer`` events are
    waiting, typically because the server has been unreachable for a while:

    * ``"block"`` (default): ``track()`` waits up to ``block_timeout`` seconds
      for room, then drops the oldest buffered event (counted in
      ``stats.dropped``). Brief back-pressure without ever hanging the caller.
    * ``"drop_oldest"``: drop the oldest buffered event at once (counted).
    * ``"raise"``: raise :class:`BufferFullError`; the caller decides.

    Event batches are not limited by ``max_retries``: a batch that fails
    transiently is retried (backoff capped at ``backoff_max``) for as long as
    the client is open, and until ``close_timeout`` once ``close()`` starts;
    what is still undelivered then is counted in ``stats.dropped``. A batch
    the server refuses for good (401, 403, 400...) is dropped at once and
    counted; individually rejected events are counted in ``stats.rejected``.
    Python ``logging`` (logger ``"abtest.client"``) reports drops and rejects.

    ``assign``/``infer`` are retried up to ``max_retries`` times only when the
    server certainly did not act: connection failures before the request was
    sent, 429 and 503 (honouring ``Retry-After``).

    ``sleep`` and ``rng`` exist so tests can observe backoff without waiting;
    ``transport`` or ``http_client`` let callers plug in their own httpx setup.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_buffer: int = 10_000,
        on_full: str = "block",
        block_timeout: float = 0.5,
        close_timeout: float = 10.0,
        backoff_base: float = 0.1,
        backoff_max: float = 10.0,
        max_retry_after: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        check_event_options(batch_size, flush_interval, max_buffer, on_full)
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.close_timeout = close_timeout
        self._timeout = timeout
        self._sleep = sleep or time.sleep
        self._backoff = _http.Backoff(backoff_base, backoff_max, max_retry_after, rng or random.Random())
        self._owns_http = owns_http = http_client is None
        self._http = http_client or httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )
        self._headers = _http.auth_headers(api_key, USER_AGENT)
        self._closed = False
        self._pipeline = EventPipeline(
            partial(_post_events, self._http, self._headers), batch_size=batch_size, flush_interval=flush_interval,
            max_buffer=max_buffer, on_full=on_full, block_timeout=block_timeout,
            request_timeout=timeout, backoff=self._backoff, sleep=sleep,
        )
        self._finalizer = weakref.finalize(
            self, _shutdown, self._pipeline, self._http, owns_http, close_timeout
        )

    # ------------------------------------------------------------ API calls
    def assign(
        self, experiment: str, unit_id: str, attributes: Mapping[str, Any] | None = None,
        *, timeout: float | None = None,
    ) -> AssignResult:
        """Which variant serves ``unit_id`` in ``experiment`` (records an exposure).

        Raises ValueError, before any request, for arguments the server would refuse
        (empty or over-long ids, NUL or lone surrogates, non-finite numbers).
        """
        body = assign_payload(experiment, unit_id, attributes)
        return _http.parse_result(AssignResult, self._request("POST", "/v1/assign", body, timeout))  # type: ignore[no-any-return]

    def infer(
        self, experiment: str, unit_id: str, prompt: str, *,
        attributes: Mapping[str, Any] | None = None, max_new_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
        stop: Sequence[str] | None = None, timeout: float | None = None,
    ) -> InferResult:
        """Run ``prompt`` on the variant assigned to ``unit_id``.

        Generation parameters left as None are omitted (server defaults).
        Arguments are checked like ``assign``'s (ValueError before any request).
        Raises :class:`EngineError` (502) / :class:`GatewayTimeoutError` (504)
        with ``request_id`` set when the engine fails or is too slow.
        """
        body = infer_payload(
            experiment, unit_id, prompt, attributes, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, seed=seed, stop=list(stop) if stop else None,
        )
        return _http.parse_result(InferResult, self._request("POST", "/v1/infer", body, timeout))  # type: ignore[no-any-return]

    def report(self, experiment: str, *, timeout: float | None = None) -> dict[str, Any]:
        """The experiment's report document, as returned by the server."""
        path = f"/v1/experiments/{quote(experiment, safe='')}/report"
        return _http.json_body(self._request("GET", path, None, timeout))

    def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``GET /healthz``; raises unless the server answers 200."""
        return _http.json_body(self._request("GET", "/healthz", None, timeout))

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None
    ) -> httpx.Response:
        """One API call with the safe-retry policy; returns a 2xx response."""
        if self._closed:
            raise ClientClosedError("client is closed")
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method, path, json=body, headers=self._headers,
                    timeout=self._timeout if timeout is None else timeout,
                )
            except httpx.HTTPError as exc:
                if attempt < self.max_retries and _http.request_not_sent(exc):
                    attempt += 1
                    self._wait_retry(attempt, None)
                    continue
                raise _http.transport_error(exc) from exc
            if response.is_success:
                return response
            error = _http.error_from_response(response)
            if attempt < self.max_retries and response.status_code in _http.API_RETRY_STATUSES:
                attempt += 1
                self._wait_retry(attempt, error.retry_after)
                continue
            raise error

    def _wait_retry(self, attempt: int, retry_after: float | None) -> None:
        self._pipeline.count_api_retry()
        self._sleep(self._backoff.delay(attempt, retry_after))

    # ------------------------------------------------------------ events
    def track(
        self, unit_id: str, name: str, value: float = 1.0, request_id: str | None = None,
        experiment: str | None = None, timestamp: datetime | str | None = None,
    ) -> str:
        """Queue one outcome event and return its ``event_id``; no I/O.

        ``timestamp`` defaults to now (UTC) and must be timezone-aware.
        Raises ValueError/TypeError on invalid arguments, :class:`BufferFullError`
        under ``on_full="raise"``, :class:`ClientClosedError` after ``close()``.
        """
        event = make_event(unit_id, name, value, request_id, experiment, timestamp)
        self._pipeline.put(event)
        return str(event["event_id"])

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every event tracked before the call is settled.

        Returns False if ``timeout`` (seconds) expired first; the events stay
        queued and keep being retried. ``None`` waits as long as it takes.
        """
        return self._pipeline.flush(timeout)

    @property
    def stats(self) -> ClientStats:
        """Snapshot of the event counters (see :class:`ClientStats`)."""
        return self._pipeline.stats()

    # ------------------------------------------------------------ lifecycle
    def close(self, timeout: float | None = None) -> ClientStats:
        """Deliver queued events (up to ``timeout``, default ``close_timeout``),
        then release the connection pool. Events still undelivered at the
        deadline are counted as dropped. Idempotent; returns the final stats."""
        self._closed = True
        # detach() succeeds for exactly one caller, so concurrent close() calls
        # (or close() racing the GC finalizer) shut down once.
        if self._finalizer.detach() is not None:
            _shutdown(
                self._pipeline, self._http, self._owns_http,
                self.close_timeout if timeout is None else timeout,
            )
        return self.stats

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
