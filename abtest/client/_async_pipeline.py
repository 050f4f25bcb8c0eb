"""The asyncio event pipeline behind ``AsyncClient.track()``.

Same rules as the threaded pipeline (``_pipeline.py``): one FIFO buffer, one
sender task, at most one batch in flight, same batch acknowledgement rules
(``_events.classify_batch_response``). All state lives on one event loop, so
an ``asyncio.Condition`` replaces the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any, Awaitable, Callable

import httpx

from ._events import BatchOutcome, classify_batch_response
from ._exceptions import BufferFullError, ClientClosedError
from ._http import Backoff
from ._models import ClientStats

__all__ = ["AsyncEventPipeline"]

log = logging.getLogger("abtest.client")

AsyncSendBatch = Callable[[list[dict[str, Any]], float], Awaitable[httpx.Response]]
_COUNTERS = ("tracked", "sent", "duplicates", "rejected", "dropped", "retries", "api_retries", "batches")


class AsyncEventPipeline:
    """Buffer events and deliver them in batches from a background task."""

    def __init__(
        self, send: AsyncSendBatch, *, batch_size: int, flush_interval: float, max_buffer: int,
        on_full: str, block_timeout: float, request_timeout: float, backoff: Backoff,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._send = send
        self._batch_size, self._interval, self._capacity = batch_size, flush_interval, max_buffer
        self._on_full, self._block_timeout = on_full, block_timeout
        self._request_timeout, self._backoff = request_timeout, backoff
        self._sleep = sleep or self._interruptible_sleep
        self._generation = 0
        self._clock = time.monotonic
        self._cond = asyncio.Condition()
        self._buf: deque[tuple[int, float, dict[str, Any]]] = deque()
        self._seq = self._flush_upto = self._inflight_count = 0
        self._inflight_min: int | None = None
        self._closing = False
        self._deadline: float | None = None
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def _bump(self, last_error: str | None = None, **deltas: int) -> None:
        for key, delta in deltas.items():
            self._counts[key] += delta
        if last_error is not None:
            self._last_error = last_error

    def stats(self) -> ClientStats:
        pending = len(self._buf) + self._inflight_count
        return ClientStats(**self._counts, pending=pending, last_error=self._last_error)

    def count_api_retry(self) -> None:
        self._bump(api_retries=1)

    async def put(self, event: dict[str, Any]) -> None:
        async with self._cond:
            if self._closing:
                raise ClientClosedError("track() called on a closed client")
            if len(self._buf) >= self._capacity:
                await self._make_room()
            self._seq += 1
            self._buf.append((self._seq, self._clock(), event))
            self._counts["tracked"] += 1
            if len(self._buf) == 1 or len(self._buf) == self._batch_size:
                self._cond.notify_all()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="abtest-events")

    async def _make_room(self) -> None:
        if self._on_full == "raise":
            raise BufferFullError(f"event buffer full ({self._capacity} events)")
        if self._on_full == "block":
            try:
                await asyncio.wait_for(
                    self._cond.wait_for(lambda: len(self._buf) < self._capacity or self._closing),
                    self._block_timeout,
                )
            except asyncio.TimeoutError:
                pass
            if self._closing:
                raise ClientClosedError("client closed while track() waited for buffer space")
        overflow = len(self._buf) - self._capacity + 1
        for _ in range(max(0, overflow)):
            self._buf.popleft()
        if overflow > 0:
            self._bump(dropped=overflow, last_error="buffer full: dropped oldest events")

    def _settled(self, target: int) -> bool:
        head_done = not self._buf or self._buf[0][0] > target
        return head_done and (self._inflight_min is None or self._inflight_min > target)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event tracked before the call is settled."""
        async with self._cond:
            target = self._seq
            self._flush_upto = max(self._flush_upto, target)
            self._cond.notify_all()
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: self._settled(target)), timeout)
            except asyncio.TimeoutError:
                return False
            return True

    async def close(self, timeout: float) -> ClientStats:
        async with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = self._clock() + max(0.0, timeout)
            self._generation += 1
            self._cond.notify_all()
            deadline = self._deadline or self._clock()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), deadline - self._clock() + 1.0)
            except asyncio.TimeoutError:
                # Last resort (a send outlived its timeout): whatever is not
                # acknowledged by now is counted as dropped, never hidden.
                lost = len(self._buf) + self._inflight_count
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._buf.clear()
                self._inflight_min, self._inflight_count = None, 0
                self._bump(dropped=lost, last_error="close deadline passed")
        return self.stats()

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            try:
                await self._deliver(batch)
            except Exception as exc:  # never let the sender die: count and go on
                log.exception("abtest: unexpected error delivering events")
                self._bump(dropped=len(batch), last_error=repr(exc))
            finally:
                async with self._cond:
                    self._inflight_min, self._inflight_count = None, 0
                    self._cond.notify_all()

    async def _next_batch(self) -> list[tuple[int, float, dict[str, Any]]] | None:
        async with self._cond:
            while True:
                if not self._buf:
                    if self._closing:
                        return None
                    await self._cond.wait()
                    continue
                now = self._clock()
                if self._closing and self._deadline is not None and now >= self._deadline:
                    self._bump(dropped=len(self._buf), last_error="close deadline passed")
                    self._buf.clear()
                    self._cond.notify_all()
                    return None
                seq, enqueued_at, _ = self._buf[0]
                due = (self._closing or len(self._buf) >= self._batch_size
                       or seq <= self._flush_upto or now - enqueued_at >= self._interval)
                if not due:
                    try:
                        await asyncio.wait_for(self._cond.wait(), enqueued_at + self._interval - now)
                    except asyncio.TimeoutError:
                        pass
                    continue
                n = min(self._batch_size, len(self._buf))
                batch = [self._buf.popleft() for _ in range(n)]
                self._inflight_min, self._inflight_count = batch[0][0], n
                self._cond.notify_all()
                return batch

    async def _deliver(self, batch: list[tuple[int, float, dict[str, Any]]]) -> None:
        parts = deque([[r[2] for r in batch]])
        while parts:
            events = parts.popleft()
            attempt = 0
            while True:
                timeout = self._request_timeout
                if self._deadline is not None:
                    timeout = max(0.05, min(timeout, self._deadline - self._clock()))
                try:
                    outcome = classify_batch_response(await self._send(events, timeout))
                except httpx.HTTPError as exc:
                    outcome = BatchOutcome("retry", error=f"transport: {exc!r}")
                if outcome.kind == "ok":
                    self._bump(sent=outcome.accepted, duplicates=outcome.duplicates,
                               rejected=len(outcome.rejected), batches=1)
                    break
                if outcome.kind == "split" and len(events) > 1:
                    mid = len(events) // 2
                    parts.extendleft([events[mid:], events[:mid]])
                    break
                attempt += 1
                delay = self._backoff.delay(attempt, outcome.retry_after)
                remaining = None if self._deadline is None else self._deadline - self._clock()
                if outcome.kind != "retry" or (remaining is not None and remaining <= 0):
                    self._bump(dropped=len(events), last_error=outcome.error)
                    log.error("abtest: dropped %d events: %s", len(events), outcome.error)
                    break
                self._bump(retries=1, last_error=outcome.error)
                await self._sleep(delay if remaining is None else min(delay, remaining))

    async def _interruptible_sleep(self, seconds: float) -> None:
        """Backoff sleep that ``close()`` cuts short (see ``_Waker`` in _pipeline)."""
        async with self._cond:
            start = self._generation
            try:
                await asyncio.wait_for(
                    self._cond.wait_for(lambda: self._generation != start), max(0.0, seconds)
                )
            except asyncio.TimeoutError:
                pass
