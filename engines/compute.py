"""One thread per process runs the engines' torch work.

libgomp (torch's OpenMP on Linux) gives every thread that starts a parallel region a team of
worker threads of its own, and once a process holds more OpenMP threads than it has CPUs it
caps their busy-wait at ~100 spins (``GOMP_SPINCOUNT`` does not lift that cap), so every
parallel region then wakes its workers through the kernel. Measured on the 2-core box: a model
loaded on the main thread and run by a scheduler thread paid ~100 us per parallel op instead of
~30 us, a 45 % slower decode step (14.5 ms against 9.5 ms at 8 rows). Running everything (load,
generate, scoring, the schedulers' steps) on one thread keeps a single team.

:func:`run` calls a function on that thread and returns its result (or raises its exception);
called from the compute thread itself it just calls it. The thread starts on first use, again
in a forked child, and takes the caller's torch thread count with each call.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["run", "on_compute_thread"]

T = TypeVar("T")

_lock = threading.Lock()
_thread: threading.Thread | None = None
_queue: queue.SimpleQueue | None = None
_pid: int | None = None


def on_compute_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread and _pid == os.getpid()


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


def _ensure() -> queue.SimpleQueue:
    global _thread, _queue, _pid
    with _lock:
        if _thread is None or _pid != os.getpid() or not _thread.is_alive():
            _queue, _pid = queue.SimpleQueue(), os.getpid()
            _thread = threading.Thread(target=_serve, args=(_queue,), name="engines-compute", daemon=True)
            _thread.start()
        return _queue


def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the compute thread."""
    if on_compute_thread():
        return fn(*args, **kwargs)
    import torch

    fut: Future = Future()
    _ensure().put((fn, args, kwargs, torch.get_num_threads(), fut))
    return fut.result()
