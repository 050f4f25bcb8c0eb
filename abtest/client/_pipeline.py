"""The threaded event pipeline behind ``Client.track()``.

One bounded FIFO buffer and one daemon sender thread, all state guarded by a
single condition variable. Keeping a single sender means at most one batch is
in flight, which makes "everything tracked before ``flush()`` was called is
settled" a cheap check: the buffer head and the in-flight batch both carry
sequence numbers, and settled means both are past the flush target.

Delivery is at-least-once on the wire and exactly-once in the database: a
batch that failed transiently is resent unchanged (same ``event_id``s) and the
server deduplicates by ``event_id``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, NamedTuple

import httpx

from ._events import BatchOutcome, classify_batch_response
from ._exceptions import BufferFullError, ClientClosedError
from ._http import Backoff
from ._models import ClientStats

__all__ = ["EventPipeline", "SendBatch"]

log = logging.getLogger("abtest.client")

# POSTs one batch: (events, request timeout in s) -> response; raises httpx.HTTPError.
SendBatch = Callable[[list[dict[str, Any]], float], httpx.Response]


class _Record(NamedTuple):
    seq: int
    enqueued_at: float
    event: dict[str, Any]


class _Waker:
    """An interruptible sleep: ``close()`` cuts a long backoff short.

    A generation counter (rather than a set-once Event) means every kick wakes
    the sleepers of that moment only, so later sleeps still sleep.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0

    def kick(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def sleep(self, seconds: float) -> None:
        with self._cond:
            start = self._generation
            self._cond.wait_for(lambda: self._generation != start, timeout=max(0.0, seconds))


class EventPipeline:
    """Buffer events and deliver them in batches from a background thread."""

    def __init__(
        self,
        send: SendBatch,
        *,
        batch_size: int,
        flush_interval: float,
        max_buffer: int,
        on_full: str,
        block_timeout: float,
        request_timeout: float,
        backoff: Backoff,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._send = send
        self._batch_size = batch_size
        self._interval = flush_interval
        self._capacity = max_buffer
        self._on_full = on_full
        self._block_timeout = block_timeout
        self._request_timeout = request_timeout
        self._backoff = backoff
        self._waker = _Waker()
        self._sleep = sleep or self._waker.sleep
        self._clock = time.monotonic
        self._cond = threading.Condition()
        self._buf: deque[_Record] = deque()
        self._seq = 0
        self._inflight_min: int | None = None
        self._inflight_count = 0
        self._flush_upto = 0
        self._closing = False
        self._deadline: float | None = None
        # Plain ints, not a dataclass, because put() bumps one per event.
        self._counts = dict.fromkeys(
            ("tracked", "sent", "duplicates", "rejected", "dropped", "retries", "api_retries", "batches"), 0
        )
        self._last_error: str | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ producers
    def put(self, event: dict[str, Any]) -> None:
        """Enqueue one validated event, applying the buffer-full policy."""
        with self._cond:
            if self._closing:
                raise ClientClosedError("track() called on a closed client")
            if len(self._buf) >= self._capacity:
                self._make_room()
            self._seq += 1
            self._buf.append(_Record(self._seq, self._clock(), event))
            self._counts["tracked"] += 1
            # Wake the sender only when it has something new to decide: the
            # first event starts the interval clock, a full batch is due now.
            # (Appends are one at a time, so the size passes through equality.)
            if len(self._buf) == 1 or len(self._buf) == self._batch_size:
                self._cond.notify_all()
            if self._thread is None:
                self._start_thread()

    def put_many(self, events: list[dict[str, Any]]) -> None:
        """``put`` of each event in order, under one lock (the exposure drain's hot path)."""
        if not events:
            return
        with self._cond:
            if self._closing:
                raise ClientClosedError("put on a closed client")
            if self._thread is None:
                self._start_thread()
            self._cond.notify_all()  # the sender decides: a batch may be due as the buffer fills
            for event in events:
                if len(self._buf) >= self._capacity:
                    self._cond.notify_all()
                    self._make_room()
                self._seq += 1
                self._buf.append(_Record(self._seq, self._clock(), event))
                self._counts["tracked"] += 1
            self._cond.notify_all()

    def _make_room(self) -> None:
        """Called with the lock held and the buffer full."""
        if self._on_full == "raise":
            raise BufferFullError(f"event buffer full ({self._capacity} events)")
        if self._on_full == "block":
            end = self._clock() + self._block_timeout
            while len(self._buf) >= self._capacity and not self._closing:
                remaining = end - self._clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closing:
                raise ClientClosedError("client closed while track() waited for buffer space")
        overflow = len(self._buf) - self._capacity + 1
        for _ in range(max(0, overflow)):
            self._buf.popleft()
        if overflow > 0:
            self._bump(dropped=overflow, last_error="buffer full: dropped oldest events")

    def _start_thread(self) -> None:
        # Started lazily so a client used only for assign/infer has no thread.
        # Daemon, because interpreter shutdown joins non-daemon threads
        # *before* running atexit hooks, and our atexit hook is what stops it.
        self._thread = threading.Thread(target=self._run, name="abtest-events", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ state
    def _bump(self, last_error: str | None = None, **deltas: int) -> None:
        """Add to counters; lock must be held."""
        for key, delta in deltas.items():
            self._counts[key] += delta
        if last_error is not None:
            self._last_error = last_error

    def stats(self) -> ClientStats:
        with self._cond:
            return ClientStats(
                **self._counts,
                pending=len(self._buf) + self._inflight_count,
                last_error=self._last_error,
            )

    def count_api_retry(self) -> None:
        with self._cond:
            self._bump(api_retries=1)

    def _settled(self, target: int) -> bool:
        head_done = not self._buf or self._buf[0].seq > target
        return head_done and (self._inflight_min is None or self._inflight_min > target)

    # ------------------------------------------------------------ flush/close
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event tracked before this call is settled.

        Settled means sent, deduplicated, rejected or dropped. Returns False if
        ``timeout`` expired first (the events stay queued and keep being
        retried). With ``timeout=None`` and an unreachable server this waits
        until the server comes back, by design: nothing is given up silently.
        """
        with self._cond:
            target = self._seq
            self._flush_upto = max(self._flush_upto, target)
            self._cond.notify_all()
            end = None if timeout is None else self._clock() + timeout
            while not self._settled(target):
                remaining = None if end is None else end - self._clock()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, timeout: float) -> ClientStats:
        """Stop accepting events; deliver what is queued until ``timeout``.

        Whatever is still undelivered at the deadline is counted as dropped.
        Idempotent; safe from atexit and from a GC finalizer.
        """
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = self._clock() + max(0.0, timeout)
                self._cond.notify_all()
            deadline = self._deadline
            thread = self._thread
        self._waker.kick()
        if thread is not None and thread is not threading.current_thread():
            # The sender bounds its own work by the deadline (request timeouts
            # included), so the extra second only absorbs scheduling delays.
            assert deadline is not None
            thread.join(max(0.0, deadline - self._clock()) + 1.0)
        return self.stats()

    # ------------------------------------------------------------ sender
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._deliver(batch)
            except Exception as exc:  # never let the sender die: count and go on
                log.exception("abtest: unexpected error delivering events")
                with self._cond:
                    self._bump(dropped=len(batch), last_error=repr(exc))
            finally:
                with self._cond:
                    self._inflight_min = None
                    self._inflight_count = 0
                    self._cond.notify_all()

    def _batch_due(self, now: float) -> bool:
        head = self._buf[0]
        return (
            self._closing
            or len(self._buf) >= self._batch_size
            or head.seq <= self._flush_upto
            or now - head.enqueued_at >= self._interval
        )

    def _next_batch(self) -> list[_Record] | None:
        """Block until a batch is due; None once closing and nothing is left."""
        with self._cond:
            while True:
                if not self._buf:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                now = self._clock()
                if self._closing and self._deadline is not None and now >= self._deadline:
                    self._drop_buffer("close deadline passed")
                    return None
                if not self._batch_due(now):
                    self._cond.wait(self._buf[0].enqueued_at + self._interval - now)
                    continue
                n = min(self._batch_size, len(self._buf))
                batch = [self._buf.popleft() for _ in range(n)]
                self._inflight_min, self._inflight_count = batch[0].seq, n
                self._cond.notify_all()  # room for producers blocked on a full buffer
                return batch

    def _drop_buffer(self, reason: str) -> None:
        n = len(self._buf)
        self._buf.clear()
        if n:
            self._bump(dropped=n, last_error=reason)
            log.warning("abtest: dropped %d undelivered events (%s)", n, reason)
        self._cond.notify_all()

    def _deliver(self, batch: list[_Record]) -> None:
        parts = deque([batch])
        while parts:
            part = parts.popleft()
            halves = self._deliver_part(part)
            parts.extendleft(reversed(halves))

    def _deliver_part(self, part: list[_Record]) -> list[list[_Record]]:
        """Send one batch until settled; returns halves to send on a 413."""
        events = [r.event for r in part]
        attempt = 0
        while True:
            try:
                outcome = classify_batch_response(self._send(events, self._timeout_now()))
            except httpx.HTTPError as exc:
                outcome = BatchOutcome("retry", error=f"transport: {exc!r}")
            if outcome.kind == "ok":
                self._record_ack(outcome, part)
                return []
            if outcome.kind == "split" and len(part) > 1:
                mid = len(part) // 2
                return [part[:mid], part[mid:]]
            if outcome.kind in ("split", "fatal"):
                self._give_up(part, outcome.error or "refused")
                return []
            attempt += 1
            delay = self._backoff.delay(attempt, outcome.retry_after)
            with self._cond:
                self._bump(retries=1, last_error=outcome.error)
                deadline = self._deadline
            if deadline is not None:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    self._give_up(part, f"close deadline passed; last error: {outcome.error}")
                    return []
                delay = min(delay, remaining)
            log.debug("abtest: retrying %d events in %.3fs (%s)", len(part), delay, outcome.error)
            self._sleep(delay)

    def _timeout_now(self) -> float:
        with self._cond:
            deadline = self._deadline
        if deadline is None:
            return self._request_timeout
        return max(0.05, min(self._request_timeout, deadline - self._clock()))

    def _record_ack(self, outcome: BatchOutcome, part: list[_Record]) -> None:
        with self._cond:
            self._bump(
                sent=outcome.accepted,
                duplicates=outcome.duplicates,
                rejected=len(outcome.rejected),
                batches=1,
                last_error=f"rejected: {outcome.rejected[0][1]}" if outcome.rejected else None,
            )
        for index, error in outcome.rejected:
            event_id = part[index].event["event_id"] if 0 <= index < len(part) else "?"
            log.warning("abtest: server rejected event %s: %s", event_id, error)

    def _give_up(self, part: list[_Record], error: str) -> None:
        with self._cond:
            self._bump(dropped=len(part), last_error=error)
        log.error("abtest: dropped %d events: %s", len(part), error)
