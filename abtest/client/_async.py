"""``AsyncClient``: the asyncio counterpart of ``Client`` (httpx.AsyncClient).

Same API, retry policy and event guarantees as :class:`abtest.client.Client`;
``track`` is a coroutine so that ``on_full="block"`` can wait without blocking
the event loop. Use it from one event loop; close it with ``await aclose()``
or ``async with`` (there is no atexit hook: an event loop cannot be driven
from one).
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime
from types import TracebackType
from typing import Any, Awaitable, Callable, Mapping, Sequence

import httpx

from . import _http
from ._async_pipeline import AsyncEventPipeline
from ._async_refresh import AsyncLocal
from ._common import (
    DEFAULTS,
    HEALTH_CALL,
    USER_AGENT,
    Call,
    ClientOptions,
    assign_call,
    infer_call,
    report_call,
    retry_delay,
)
from ._events import make_event
from ._exceptions import ClientClosedError
from ._local import DefinitionsStatus, LocalEvaluator
from ._models import AssignResult, ClientStats, InferResult
from .sticky import StickyStore

__all__ = ["AsyncClient"]


class AsyncClient:
    """Asyncio client for the abtest HTTP API (see :class:`Client` for policies).

    ``evaluation="local"``: as for :class:`Client`; the first load happens in ``async with``
    (or the first ``assign``), and the refresh and push run as tasks on the client's loop.
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
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
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
        self._sleep = sleep or asyncio.sleep
        self._backoff = options.make_backoff(rng)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)
        self._headers = _http.auth_headers(api_key, USER_AGENT)
        self._closed = False
        self._pipeline = AsyncEventPipeline(self._post_events, **options.pipeline_options(self._backoff, sleep))
        self._local: AsyncLocal | None = None
        if options.local:
            evaluator = LocalEvaluator(sticky_store=sticky_store, fallback_variant=fallback_variant,
                                       on_unavailable=on_unavailable)
            exposures = AsyncEventPipeline(self._post_exposures, **options.pipeline_options(self._backoff, sleep))
            self._local = AsyncLocal(self._http, self._headers, evaluator, exposures, timeout=timeout,
                                     refresh_interval=refresh_interval, flush_interval=flush_interval, push=push)

    async def assign(
        self, experiment: str, unit_id: str, attributes: Mapping[str, Any] | None = None,
        *, timeout: float | None = None,
    ) -> AssignResult:
        local = self._local
        if local is not None:
            if self._closed:
                raise ClientClosedError("client is closed")
            if not local.started:
                await local.start()
            result = local.evaluator.assign(experiment, unit_id, attributes)
            if len(local.evaluator.exposures) >= self._options.max_buffer:
                await local.drain()  # awaits only while the pipeline's buffer is full
            return result
        call = assign_call(experiment, unit_id, attributes)  # ValueError before any request
        return await self._request(call, timeout)  # type: ignore[no-any-return]

    async def infer(
        self, experiment: str, unit_id: str, prompt: str, *,
        attributes: Mapping[str, Any] | None = None, max_new_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
        stop: Sequence[str] | None = None, timeout: float | None = None,
    ) -> InferResult:
        call = infer_call(
            experiment, unit_id, prompt, attributes, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, seed=seed, stop=stop,
        )
        return await self._request(call, timeout)  # type: ignore[no-any-return]

    async def report(self, experiment: str, *, timeout: float | None = None) -> dict[str, Any]:
        return await self._request(report_call(experiment), timeout)  # type: ignore[no-any-return]

    async def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        return await self._request(HEALTH_CALL, timeout)  # type: ignore[no-any-return]

    async def _request(self, call: Call, timeout: float | None) -> Any:
        """One API call with the safe-retry policy (:func:`retry_delay`); returns its parsed result."""
        if self._closed:
            raise ClientClosedError("client is closed")
        retries = 0
        while True:
            try:
                response = await self._http.request(
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
            await self._sleep(delay)

    async def track(
        self, unit_id: str, name: str, value: float = 1.0, request_id: str | None = None,
        experiment: str | None = None, timestamp: datetime | str | None = None,
    ) -> str:
        """Queue one event and return its ``event_id``; awaits only under
        ``on_full="block"`` with a full buffer."""
        event = make_event(unit_id, name, value, request_id, experiment, timestamp)
        await self._pipeline.put(event)
        return str(event["event_id"])

    async def _post_events(self, events: list[dict[str, Any]], timeout: float) -> httpx.Response:
        return await self._http.post(
            "/v1/events", json={"events": events}, headers=self._headers, timeout=timeout
        )

    async def _post_exposures(self, exposures: list[dict[str, Any]], timeout: float) -> httpx.Response:
        return await self._http.post(
            "/v1/exposures", json={"exposures": exposures}, headers=self._headers, timeout=timeout
        )

    async def flush(self, timeout: float | None = None) -> bool:
        local = self._local
        if local is None:
            return await self._pipeline.flush(timeout)
        end = None if timeout is None else time.monotonic() + timeout
        await local.drain()
        done = await local.exposures.flush(timeout)
        return await self._pipeline.flush(None if end is None else max(0.0, end - time.monotonic())) and done

    @property
    def stats(self) -> ClientStats:
        return self._pipeline.stats()

    @property
    def exposure_stats(self) -> ClientStats | None:
        return None if self._local is None else self._local.exposures.stats()

    @property
    def definitions(self) -> DefinitionsStatus | None:
        return None if self._local is None else self._local.evaluator.status

    async def refresh(self) -> DefinitionsStatus:
        if self._local is None:
            raise RuntimeError("refresh() needs evaluation='local'")
        await self._local.fetch()
        return self._local.evaluator.status

    async def aclose(self, timeout: float | None = None) -> ClientStats:
        """Deliver queued events (up to ``timeout``), then close the connections."""
        if not self._closed:
            self._closed = True
            if self._local is not None:
                await self._local.close(self.close_timeout if timeout is None else timeout)
            await self._pipeline.close(self.close_timeout if timeout is None else timeout)
            await self._http.aclose()
        return self.stats

    async def __aenter__(self) -> "AsyncClient":
        if self._local is not None:
            await self._local.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
