"""Dynamic batching: requests from many threads are grouped into engine batches.

A batch runs when ``max_batch_size`` requests wait, when the oldest waiting request has
waited ``max_wait_ms``, or when no request has arrived for ``idle_gap_ms`` (default 2 ms): an
idle engine starts a lone request at once instead of holding it for ``max_wait_ms``, while a
burst that arrives together still runs as one batch. One worker thread sleeps on a Condition (no busy polling) and runs the
batches one after another; every caller gets a Future that ends with its own result or its
own exception (like Ray Serve's ``@serve.batch``: one output per input, in order). The queue is
bounded: ``submit`` raises :class:`Overloaded` when it is full. ``close(drain=True)`` runs what
is queued before stopping; ``close(drain=False)`` fails it with :class:`EngineClosed`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from engines.streaming import TextSink
from engines.types import EngineClosed, EngineError, GenerationRequest, Overloaded

log = logging.getLogger(__name__)

__all__ = ["BatchingScheduler", "RequestFuture", "Expired", "BATCH_SIZES_KEPT"]

BATCH_SIZES_KEPT = 4096  # statistics stay bounded however long a scheduler serves


class Expired(EngineError):
    """The caller stopped waiting (its deadline passed, or it abandoned the request): the
    request was dropped before it ran, or left its batch at the next decode step."""

    code = "expired"


class RequestFuture(Future):
    """The Future of a scheduled request. :meth:`abandon` when its caller stops waiting: before
    it runs it is cancelled; while it runs the engine drops it at its next decode step, and it
    ends with :class:`Expired`."""

    def __init__(self) -> None:
        super().__init__()
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True
        self.cancel()


@dataclass
class _Pending:
    request: GenerationRequest
    future: Future
    t_submit: float = field(default_factory=time.monotonic)
    deadline: float | None = None  # UNIX time after which nobody waits for the result
    on_text: TextSink | None = None  # streaming: told each new piece of text as it is decoded

    def alive(self) -> bool:
        """Whether someone still waits for this request."""
        if getattr(self.future, "abandoned", False):
            return False
        return self.deadline is None or time.time() < self.deadline


class BatchingScheduler:
    def __init__(self, engine, *, max_batch_size: int | None = None, max_wait_ms: float | None = None,
                 max_queue: int | None = None, name: str | None = None, idle_gap_ms: float | None = None):
        spec = getattr(engine, "spec", None)
        self.engine = engine
        self.idle_gap_ms = float(idle_gap_ms if idle_gap_ms is not None else getattr(spec, "idle_gap_ms", 2.0))
        self.max_batch_size = int(max_batch_size if max_batch_size is not None else getattr(spec, "max_batch_size", 256))
        self.max_wait_ms = float(max_wait_ms if max_wait_ms is not None else getattr(spec, "max_wait_ms", 50.0))
        self.max_queue = int(max_queue if max_queue is not None else getattr(spec, "max_queue", 1024))
        if self.max_batch_size < 1 or self.max_queue < 1 or self.max_wait_ms < 0 or self.idle_gap_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_ms and idle_gap_ms >= 0")
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._closed = False
        self._running = 0  # requests in the batch being run now
        self._last_arrival = 0.0  # monotonic time of the latest submit
        self.batches_run = 0
        self.requests_run = 0
        self.batch_sizes: deque[int] = deque(maxlen=BATCH_SIZES_KEPT)  # the latest batches' sizes
        label = name or getattr(spec, "name", "engine")
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{label}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API

    def submit(self, request: GenerationRequest, deadline: float | None = None,
               on_text: TextSink | None = None) -> RequestFuture:
        """Queue a request; the Future resolves to its GenerationResult or raises its error.

        ``deadline`` (UNIX time): the caller waits no longer; past it the request is dropped
        before it runs, or at the next decode step of its batch (:class:`Expired`).
        ``on_text`` (streaming): called on the batching thread with each new piece of the
        completion's text as it is decoded (it must return at once); streamed and plain
        requests share batches."""
        fut = RequestFuture()
        with self._cond:
            if self._closed:
                raise EngineClosed("the batching scheduler is closed")
            if len(self._queue) >= self.max_queue:
                raise Overloaded(f"queue is full ({self.max_queue} requests waiting); retry later")
            pending = _Pending(request, fut, deadline=deadline, on_text=on_text)
            self._queue.append(pending)
            self._last_arrival = pending.t_submit
            n = len(self._queue)
            if n == 1 or n >= self.max_batch_size:
                self._cond.notify()
        return fut

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting requests; run (drain=True) or fail (drain=False) the queued ones, then
        stop the worker (waits up to ``timeout`` seconds for it)."""
        dropped: list[_Pending] = []
        with self._cond:
            self._closed = True
            if not drain:
                dropped = list(self._queue)
                self._queue.clear()
            self._cond.notify_all()
        for p in dropped:
            if p.future.set_running_or_notify_cancel():
                p.future.set_exception(EngineClosed("the batching scheduler closed before this request ran"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ worker

    def _next_batch(self) -> list[_Pending] | None:
        """Called when the engine is idle: the next batch, once it is full, its oldest request has
        waited ``max_wait_ms``, or no request came for ``idle_gap_ms``; None once closed and empty."""
        max_wait, gap = self.max_wait_ms / 1e3, self.idle_gap_ms / 1e3
        with self._cond:
            while True:
                if not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                if self._closed or len(self._queue) >= self.max_batch_size:
                    break
                due = min(self._queue[0].t_submit + max_wait, self._last_arrival + gap)
                remaining = due - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(len(self._queue), self.max_batch_size)
            batch = [self._queue.popleft() for _ in range(n)]
            self._running = n
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException:  # pragma: no cover - never let the worker die silently
                log.exception("batch failed unexpectedly")
            finally:
                with self._cond:
                    self._running = 0

    def _run(self, batch: list[_Pending]) -> None:
        live = []
        for p in batch:
            if not p.future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            if not p.alive():  # its caller's deadline passed while it waited
                p.future.set_exception(Expired("the caller stopped waiting before the request ran"))
                continue
            live.append(p)
        if not live:
            return
        t0 = time.monotonic()
        queue_ms = [(t0 - p.t_submit) * 1e3 for p in live]
        try:
            streamed = [p.on_text for p in live] if any(p.on_text for p in live) else None
            results = self.engine.generate([p.request for p in live], queue_ms=queue_ms,
                                           alive=[p.alive for p in live],
                                           **({"on_text": streamed} if streamed else {}))
            if len(results) != len(live):
                raise EngineError(f"engine returned {len(results)} results for {len(live)} requests")
        except BaseException as e:  # noqa: BLE001 - every caller gets the exception
            err = e if isinstance(e, Exception) else EngineError(f"engine failed: {e!r}")
            for p in live:
                p.future.set_exception(err)
            if not isinstance(e, Exception):
                raise
            return
        self.batches_run += 1
        self.requests_run += len(live)
        self.batch_sizes.append(len(live))
        for p, res in zip(live, results):
            if isinstance(res, BaseException):
                p.future.set_exception(res)
            elif getattr(res, "finish_reason", None) == "expired":
                p.future.set_exception(Expired("the caller stopped waiting; the request left its batch"))
            else:
                p.future.set_result(res)
