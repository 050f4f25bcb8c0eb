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
from datetime import datetime
from types import TracebackType
from typing import Any, Awaitable, Callable, Mapping, Sequence
from urllib.parse import quote

import httpx

from . import _http
from ._async_pipeline import AsyncEventPipeline
from ._client import USER_AGENT, assign_payload, check_event_options, infer_payload
from ._events import make_event
from ._exceptions import ClientClosedError
from ._models import AssignResult, ClientStats, InferResult

__all__ = ["AsyncClient"]


class AsyncClient:
    """Asyncio client for the abtest HTTP API (see :class:`Client` for policies)."""

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
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        check_event_options(batch_size, flush_interval, max_buffer, on_full)
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.close_timeout = close_timeout
        self._timeout = timeout
        self._sleep = sleep or asyncio.sleep
        self._backoff = _http.Backoff(backoff_base, backoff_max, max_retry_after, rng or random.Random())
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)
        self._headers = _http.auth_headers(api_key, USER_AGENT)
        self._closed = False
        self._pipeline = AsyncEventPipeline(
            self._post_events, batch_size=batch_size, flush_interval=flush_interval,
            max_buffer=max_buffer, on_full=on_full, block_timeout=block_timeout,
            request_timeout=timeout, backoff=self._backoff, sleep=sleep,
        )

    async def assign(
        self, experiment: str, unit_id: str, attributes: Mapping[str, Any] | None = None,
        *, timeout: float | None = None,
    ) -> AssignResult:
        body = assign_payload(experiment, unit_id, attributes)  # ValueError before any request
        return _http.parse_result(AssignResult, await self._request("POST", "/v1/assign", body, timeout))  # type: ignore[no-any-return]

    async def infer(
        self, experiment: str, unit_id: str, prompt: str, *,
        attributes: Mapping[str, Any] | None = None, max_new_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
        stop: Sequence[str] | None = None, timeout: float | None = None,
    ) -> InferResult:
        body = infer_payload(
            experiment, unit_id, prompt, attributes, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, seed=seed, stop=list(stop) if stop else None,
        )
        return _http.parse_result(InferResult, await self._request("POST", "/v1/infer", body, timeout))  # type: ignore[no-any-return]

    async def report(self, experiment: str, *, timeout: float | None = None) -> dict[str, Any]:
        path = f"/v1/experiments/{quote(experiment, safe='')}/report"
        return _http.json_body(await self._request("GET", path, None, timeout))

    async def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        return _http.json_body(await self._request("GET", "/healthz", None, timeout))

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None
    ) -> httpx.Response:
        if self._closed:
            raise ClientClosedError("client is closed")
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method, path, json=body, headers=self._headers,
                    timeout=self._timeout if timeout is None else timeout,
                )
            except httpx.HTTPError as exc:
                if attempt < self.max_retries and _http.request_not_sent(exc):
                    attempt += 1
                    await self._wait_retry(attempt, None)
                    continue
                raise _http.transport_error(exc) from exc
            if response.is_success:
                return response
            error = _http.error_from_response(response)
            if attempt < self.max_retries and response.status_code in _http.API_RETRY_STATUSES:
                attempt += 1
                await self._wait_retry(attempt, error.retry_after)
                continue
            raise error

    async def _wait_retry(self, attempt: int, retry_after: float | None) -> None:
        self._pipeline.count_api_retry()
        await self._sleep(self._backoff.delay(attempt, retry_after))

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

    async def flush(self, timeout: float | None = None) -> bool:
        return await self._pipeline.flush(timeout)

    @property
    def stats(self) -> ClientStats:
        return self._pipeline.stats()

    async def aclose(self, timeout: float | None = None) -> ClientStats:
        """Deliver queued events (up to ``timeout``), then close the connections."""
        if not self._closed:
            self._closed = True
            await self._pipeline.close(self.close_timeout if timeout is None else timeout)
            await self._http.aclose()
        return self.stats

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
