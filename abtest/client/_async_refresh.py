"""The tasks behind ``AsyncClient(..., evaluation="local")``: the asyncio twin of
``_refresh.py`` (same schedule: drain exposures every ``flush_interval``, refresh every
``refresh_interval`` or at once on a push), on the client's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import httpx

from ._async_pipeline import AsyncEventPipeline
from ._local import DEFINITIONS_PATH, STREAM_PATH, LocalEvaluator

__all__ = ["AsyncLocal"]

log = logging.getLogger("abtest.client")


class AsyncLocal:
    def __init__(self, http: httpx.AsyncClient, headers: dict[str, str], evaluator: LocalEvaluator,
                 exposures: AsyncEventPipeline, *, timeout: float, refresh_interval: float,
                 flush_interval: float, push: bool) -> None:
        self.http, self.headers, self.evaluator, self.exposures = http, headers, evaluator, exposures
        self.timeout, self.refresh_interval, self.flush_interval, self.push = (
            timeout, refresh_interval, flush_interval, push)
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._handing_over = asyncio.Lock()
        self.refreshes = 0

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    async def start(self) -> None:
        """The first load, then the background tasks (on the running loop)."""
        if self._tasks:
            return
        self._wake = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._refresh_loop()))  # marks started before awaiting
        await self.fetch()
        if self.push:
            self._tasks.append(asyncio.create_task(self._push_loop()))

    async def fetch(self) -> None:
        try:
            response = await self.http.get(DEFINITIONS_PATH, headers={**self.headers, **self.evaluator.request_headers()},
                                           timeout=self.timeout)
        except httpx.HTTPError as exc:
            self.evaluator.failed(f"transport: {type(exc).__name__}: {exc}")
            return
        self.evaluator.accept(response)

    async def drain(self) -> None:
        # One drain at a time: a flush's drain waits until a drain in progress has put its items
        # into the pipeline (it may await a full buffer), so the flush waits for them too.
        async with self._handing_over:
            for item in self.evaluator.exposures.drain():  # awaits only when the buffer is full ("block")
                await self.exposures.put(item)

    async def _refresh_loop(self) -> None:
        assert self._wake is not None
        next_refresh = time.monotonic() + self.refresh_interval
        while True:
            wait = max(0.0, min(next_refresh - time.monotonic(), self.flush_interval))
            woke = False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
                woke = True
            self._wake.clear()
            try:
                await self.drain()
                if woke or time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + self.refresh_interval
                    await self.fetch()
                    self.refreshes += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the task must outlive any one failure
                log.exception("abtest: definitions refresh failed")

    async def _push_loop(self) -> None:
        timeout = httpx.Timeout(self.timeout, read=60.0)
        while True:
            try:
                async with self.http.stream("GET", STREAM_PATH, headers=self.headers, timeout=timeout) as r:
                    if r.status_code == 200:
                        async for line in r.aiter_lines():
                            if line.startswith("data:"):
                                version = json.loads(line[5:]).get("version")
                                if isinstance(version, str) and version != self.evaluator.version:
                                    assert self._wake is not None
                                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect after any failure
                log.debug("abtest: definitions stream broke (%s); reconnecting", exc)
            await asyncio.sleep(1.0)

    async def close(self, timeout: float) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.drain()
        await self.exposures.close(timeout)
