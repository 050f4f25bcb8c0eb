"""The synchronous, thread-safe ``Client``."""

from __future__ import annotations

import random
import time
import weakref
from functools import partial
from datetime import datetime
from types import TracebackType
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import httpx

from . import _http
from ._common import (
    DEFAULTS,
    HEALTH_CALL,
    USER_AGENT,
    Call,
    ClientOptions,
    assign_call,
    assign_payload,
    check_event_options,
    infer_call,
    infer_payload,
    report_call,
    retry_delay,
)
from ._events import make_event
from ._exceptions import ClientClosedError
from ._local import DefinitionsStatus, LocalEvaluator
from ._models import AssignResult, ClientStats, InferResult
from ._pipeline import EventPipeline
from ._refresh import PushListener, Refresher, fetch_definitions
from .sticky import StickyStore

# assign_payload, infer_payload, check_event_options and USER_AGENT live in _common
# (shared with AsyncClient); re-exported here, where they used to be defined.
__all__ = ["Client", "assign_payload", "infer_payload", "check_event_options", "USER_AGENT"]


def _post_events(
    http: httpx.Client, headers: dict[str, str], events: list[dict[str, Any]], timeout: float
) -> httpx.Response:
    """POST one events batch. A module-level function (bound with partial)
    rather than a method, so the sender thread holds no reference to the
    client and an abandoned client can still be garbage-collected."""
    return http.post("/v1/events", json={"events": events}, headers=headers, timeout=timeout)


def _post_exposures(
    http: httpx.Client, headers: dict[str, str], exposures: list[dict[str, Any]], timeout: float
) -> httpx.Response:
    """POST one exposures batch (local evaluation), like :func:`_post_events`."""
    return http.post("/v1/exposures", json={"exposures": exposures}, headers=headers, timeout=timeout)


class _Local(NamedTuple):
    """What local evaluation adds to a client: its evaluator, exposure pipeline and threads."""

    evaluator: LocalEvaluator
    exposures: EventPipeline
    refresher: Refresher
    push: PushListener | None

    def drain(self) -> None:
        _drain(self.evaluator, self.exposures)


def _drain(evaluator: LocalEvaluator, exposures: EventPipeline) -> None:
    with evaluator.exposures.handing_over:  # a flush that drains next waits for these items
        exposures.put_many(evaluator.exposures.drain())


def _pushed(evaluator: LocalEvaluator, refresher: Refresher, version: str) -> None:
    if version != evaluator.version:
        refresher.poke()


def _shutdown(pipeline: EventPipeline, http: httpx.Client, owns_http: bool, timeout: float,
              local: _Local | None = None) -> None:
    """Finalizer: runs at ``close()``, at GC of the client, or at interpreter exit.

    Module-level and given only the pipelines, threads and transport (never the client)
    so the registered finalizer does not keep the client alive.
    """
    deadline = time.monotonic() + timeout
    if local is not None:
        if local.push is not None:
            local.push.stop()
        local.refresher.stop()
        local.drain()  # the last exposures go out with the rest
        local.exposures.close(timeout)
    pipeline.close(max(0.0, deadline - time.monotonic()))
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

    ``evaluation="local"`` evaluates ``assign`` in process (see docs/sdk.md): the client
    loads the definitions of every experiment at construction (``GET /v1/sdk/definitions``,
    waiting at most ``timeout``), refreshes them every ``refresh_interval`` seconds in a
    background thread (``If-None-Match``: a 304 costs no body) and at once on a server push
    with ``push=True``, and sends the exposures of enrolled units, aggregated per unit, in
    batches through a second lossless pipeline (``POST /v1/exposures``, idempotent ids;
    ``exposure_stats``). ``sticky_store`` (e.g. :class:`~abtest.client.sticky.RedisStickyStore`)
    keeps units of sticky experiments in their variant; a failing store means plain hashing,
    counted in ``definitions.sticky_failures``. With no definitions loaded yet, ``assign``
    answers ``fallback_variant`` with reason ``definitions_unavailable`` (or raises
    :class:`DefinitionsUnavailableError` with ``on_unavailable="raise"``); stale ones keep
    serving, their age in ``definitions.age_s``.

    ``sleep`` and ``rng`` exist so tests can observe backoff without waiting;
    ``transport`` or ``http_client`` let callers plug in their own httpx setup.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = DEFAULTS.timeout,
        max_retries: int = DEFAULTS.max_retries,
        batch_size: int = DEFAULTS.batch_size,
        flush_interval: float = DEFAULTS.flush_interval,
        max_buffer: int = DEFAULTS.max_buffer,
        on_full: str = DEFAULTS.on_full,
        block_timeout: float = DEFAULTS.block_timeout,
        close_timeout: float = DEFAULTS.close_timeout,
        backoff_base: float = DEFAULTS.backoff_base,
        backoff_max: float = DEFAULTS.backoff_max,
        max_retry_after: float = DEFAULTS.max_retry_after,
        evaluation: str = DEFAULTS.evaluation,
        refresh_interval: float = DEFAULTS.refresh_interval,
        push: bool = DEFAULTS.push,
        sticky_store: StickyStore | None = None,
        fallback_variant: str = DEFAULTS.fallback_variant,
        on_unavailable: str = DEFAULTS.on_unavailable,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._options = options = ClientOptions(
            timeout=timeout, max_retries=max_retries, batch_size=batch_size, flush_interval=flush_interval,
            max_buffer=max_buffer, on_full=on_full, block_timeout=block_timeout, close_timeout=close_timeout,
            backoff_base=backoff_base, backoff_max=backoff_max, max_retry_after=max_retry_after,
            evaluation=evaluation, refresh_interval=refresh_interval, push=push,
            fallback_variant=fallback_variant, on_unavailable=on_unavailable,
        )  # ValueError on invalid options
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.close_timeout = close_timeout
        self._sleep = sleep or time.sleep
        self._sleep_arg = sleep
        self._backoff = options.make_backoff(rng)
        self._owns_http = owns_http = http_client is None
        self._http = http_client or httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )
        self._headers = _http.auth_headers(api_key, USER_AGENT)
        self._closed = False
        self._pipeline = EventPipeline(
            partial(_post_events, self._http, self._headers), **options.pipeline_options(self._backoff, sleep)
        )
        self._local = self._start_local(sticky_store) if options.local else None
        self._finalizer = weakref.finalize(
            self, _shutdown, self._pipeline, self._http, owns_http, close_timeout, self._local
        )

    def _start_local(self, sticky_store: StickyStore | None) -> _Local:
        options = self._options
        evaluator = LocalEvaluator(sticky_store=sticky_store, fallback_variant=options.fallback_variant,
                                   on_unavailable=options.on_unavailable)
        exposures = EventPipeline(partial(_post_exposures, self._http, self._headers),
                                  **options.pipeline_options(self._backoff, self._sleep_arg))
        fetch = partial(fetch_definitions, self._http, self._headers, evaluator, options.timeout)
        fetch()  # the first load, before any assign (failures are recorded, not raised)
        refresher = Refresher(fetch, partial(_drain, evaluator, exposures),
                              refresh_interval=options.refresh_interval, flush_interval=options.flush_interval)
        push = (PushListener(self._http, self._headers, partial(_pushed, evaluator, refresher),
                             connect_timeout=options.timeout) if options.push else None)
        return _Local(evaluator, exposures, refresher, push)

    # ------------------------------------------------------------ API calls
    def assign(
        self, experiment: str, unit_id: str, attributes: Mapping[str, Any] | None = None,
        *, timeout: float | None = None,
    ) -> AssignResult:
        """Which variant serves ``unit_id`` in ``experiment`` (records an exposure).

        Raises ValueError, before any request, for arguments the server would refuse
        (empty or over-long ids, NUL or lone surrogates, non-finite numbers). With
        ``evaluation="local"`` no request is made: the same answer is computed in process.
        """
        local = self._local
        if local is not None:
            if self._closed:
                raise ClientClosedError("client is closed")
            result = local.evaluator.assign(experiment, unit_id, attributes)
            if len(local.evaluator.exposures) >= self._options.max_buffer:
                local.refresher.drain_soon()  # the refresher thread drains; assign never blocks
            return result
        return self._request(assign_call(experiment, unit_id, attributes), timeout)  # type: ignore[no-any-return]

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
        call = infer_call(
            experiment, unit_id, prompt, attributes, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, seed=seed, stop=stop,
        )
        return self._request(call, timeout)  # type: ignore[no-any-return]

    def report(self, experiment: str, *, timeout: float | None = None) -> dict[str, Any]:
        """The experiment's report document, as returned by the server."""
        return self._request(report_call(experiment), timeout)  # type: ignore[no-any-return]

    def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``GET /healthz``; raises unless the server answers 200."""
        return self._request(HEALTH_CALL, timeout)  # type: ignore[no-any-return]

    def _request(self, call: Call, timeout: float | None) -> Any:
        """One API call with the safe-retry policy (:func:`retry_delay`); returns its parsed result."""
        if self._closed:
            raise ClientClosedError("client is closed")
        retries = 0
        while True:
            try:
                response = self._http.request(
                    call.method, call.path, json=call.body, headers=self._headers,
                    timeout=self._options.request_timeout(timeout),
                )
            except httpx.HTTPError as exc:
                delay = retry_delay(retries, self.max_retries, exc, self._backoff)
                if delay is None:
                    raise _http.transport_error(exc) from exc
            else:
                if response.is_success:
                    return call.parse(response)
                error = _http.error_from_response(response)
                delay = retry_delay(retries, self.max_retries, error, self._backoff)
                if delay is None:
                    raise error
            retries += 1
            self._pipeline.count_api_retry()
            self._sleep(delay)

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
        Local evaluation: the exposures recorded so far are flushed too.
        """
        local = self._local
        if local is None:
            return self._pipeline.flush(timeout)
        end = None if timeout is None else time.monotonic() + timeout
        local.drain()
        done = local.exposures.flush(timeout)
        return self._pipeline.flush(None if end is None else max(0.0, end - time.monotonic())) and done

    @property
    def stats(self) -> ClientStats:
        """Snapshot of the event counters (see :class:`ClientStats`)."""
        return self._pipeline.stats()

    @property
    def exposure_stats(self) -> ClientStats | None:
        """Local evaluation: the exposure pipeline's counters (``tracked`` counts aggregated
        items, one per experiment, phase and unit per flush); None in remote mode."""
        return None if self._local is None else self._local.exposures.stats()

    @property
    def definitions(self) -> DefinitionsStatus | None:
        """Local evaluation: the definitions' version, age and refresh counters; None in remote mode."""
        return None if self._local is None else self._local.evaluator.status

    def refresh(self) -> DefinitionsStatus:
        """Local evaluation: ask for the definitions now (blocking); returns the new status."""
        if self._local is None:
            raise RuntimeError("refresh() needs evaluation='local'")
        fetch_definitions(self._http, self._headers, self._local.evaluator, self._options.timeout)
        return self._local.evaluator.status

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
                self.close_timeout if timeout is None else timeout, self._local,
            )
        return self.stats

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
