"""The thread an engine's torch work runs on.

libgomp (torch's OpenMP on Linux) gives every thread that starts a parallel region a team of
worker threads of its own, and once a process holds more OpenMP threads than it has CPUs it
caps their busy-wait at ~100 spins (``GOMP_SPINCOUNT`` does not lift that cap), so every
parallel region then wakes its workers through the kernel. Measured on the 2-core box: a model
loaded on the main thread and run by a scheduler thread paid ~100 us per parallel op instead of
~30 us, a 45 % slower decode step (14.5 ms against 9.5 ms at 8 rows).

So each engine runs everything (load, generate, scoring, its scheduler's steps) on one
:class:`ComputeThread`: a process serving one engine (a Celery worker) keeps a single OpenMP
team. Engines in one process get a thread each by default, so they compute side by side (an
A/B split in embedded mode must not queue one variant behind the other); a caller that runs
engines one at a time (the benchmarks) passes them one shared thread.

:meth:`ComputeThread.run` calls a function on the thread and returns its result (or raises its
exception); called from that thread itself it just calls it. The thread starts on first use,
again in a forked child, and takes the caller's torch thread count with each call.
:func:`run` uses a process-wide default thread.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["ComputeThread", "run", "default"]

T = TypeVar("T")


class ComputeThread:
    def __init__(self, name: str = "engines-compute"):
        self.name = name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._queue: queue.SimpleQueue | None = None
        self._pid: int | None = None

    def on_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread and self._pid == os.getpid()

    @staticmethod
    def _serve(q: queue.SimpleQueue) -> None:
        import torch

        while True:
            fn, args, kwargs, threads, fut = q.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                if threads and torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)
                fut.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the caller, which re-raises it
                fut.set_exception(e)

    def _ensure(self) -> queue.SimpleQueue:
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._queue, self._pid = queue.SimpleQueue(), os.getpid()
                self._thread = threading.Thread(target=self._serve, args=(self._queue,), name=self.name, daemon=True)
                self._thread.start()
            return self._queue

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on this thread."""
        if self.on_thread():
            return fn(*args, **kwargs)
        import torch

        fut: Future = Future()
        self._ensure().put((fn, args, kwargs, torch.get_num_threads(), fut))
        return fut.result()


_default = ComputeThread()


def default() -> ComputeThread:
    """The process-wide default thread (engines built without one of their own)."""
    return _default


def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the process-wide default thread."""
    return _default.run(fn, *args, **kwargs)
