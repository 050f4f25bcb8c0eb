"""InProcessDispatcher: embedded mode (no broker), engines loaded in the API process.

``submit`` hands the request straight to the batching scheduler of an engine loaded here, via
the same ``workers.runner.submit_generation`` a Celery worker runs; ``open_stream`` does the
same for a streamed request, whose text the batching thread puts on a :class:`QueueStream`.
Importing this module loads neither celery nor redis (tests/test_boundaries.py checks it).
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import Future
from typing import Any

from .host import EngineHost
from .runner import error_reply, submit_generation

__all__ = ["InProcessDispatcher", "QueueStream"]

Event = tuple[str, Any]


class QueueStream:
    """A streamed request's events on one in-memory queue: each ``("text", delta)`` from the
    batching thread, then ``("reply", reply)``; :meth:`cancel` makes the request leave its batch."""

    def __init__(self) -> None:
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._reply: Future | None = None

    def on_text(self, delta: str) -> None:
        self._events.put(("text", delta))

    def attach(self, reply: Future) -> "QueueStream":
        self._reply = reply
        reply.add_done_callback(lambda f: self._events.put(("reply", error_reply(
            "cancelled", "the client went away; the request left its batch") if f.cancelled() else f.result())))
        return self

    def get(self, timeout: float) -> Event | None:
        try:
            return self._events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def cancel(self) -> None:
        if self._reply is not None:
            self._reply.cancel()

    def close(self) -> None:
        pass


class InProcessDispatcher:
    mode = "embedded"

    def __init__(self, host: EngineHost) -> None:
        self.host = host

    def submit(self, engine: str, request_id: str, payload: dict[str, Any], timeout: float) -> Future:
        deadline = time.time() + timeout
        return submit_generation(self.host, engine, {**payload, "request_id": request_id}, deadline)

    def open_stream(self, engine: str, request_id: str, payload: dict[str, Any], timeout: float) -> QueueStream:
        stream = QueueStream()
        reply = submit_generation(self.host, engine, {**payload, "request_id": request_id}, time.time() + timeout,
                                  on_text=stream.on_text)
        return stream.attach(reply)

    def queue_depths(self) -> dict[str, int]:
        return {name: self.host.queue_depth(name) for name in self.host.specs}

    def health(self) -> str:
        return "ok"

    def engine_states(self) -> dict[str, str]:
        return self.host.states()

    def problems(self) -> dict[str, str]:
        return self.host.problems()

    def workers_seen(self) -> dict[str, int | None]:
        """Embedded: this process serves every engine itself (one "worker" each)."""
        return dict.fromkeys(self.host.specs, 1)

    def start_loading(self) -> None:
        self.host.start_loading()

    def close(self) -> None:
        self.host.close()
