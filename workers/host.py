"""EngineHost: the engines of one process, each loaded once behind its batching scheduler."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time

from engines.spec import EngineSpec
from engines.types import EngineError

__all__ = ["EngineHost", "EngineUnavailable", "EngineStarting"]

log = logging.getLogger(__name__)


class EngineUnavailable(EngineError):
    code = "engine_unavailable"


class EngineStarting(EngineError):
    """The engine is still loading (readiness): the caller should retry shortly."""

    code = "engine_starting"


class EngineHost:
    """Load engines lazily, eagerly (:meth:`preload`) or in the background (:meth:`start_loading`)
    and keep one scheduler each.

    While an engine loads in the background its requests fail at once with
    :class:`EngineStarting` (never waiting on the load, whose time is no request's latency).
    An engine loaded on first use (no preloading) is loaded on a thread of its own, and a
    caller with ``wait_s`` waits for it no longer than that before :class:`EngineStarting`, so a
    cold first request still answers by its deadline. A failed load is remembered for
    ``retry_after_s`` seconds, so a broken checkpoint fails its requests fast (502) instead of
    reloading on every request.
    """

    def __init__(self, specs: dict[str, EngineSpec], *, device: str | None = None,
                 retry_after_s: float = 30.0) -> None:
        self.specs = {name: dataclasses.replace(s, device=device) if device else s for name, s in specs.items()}
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self.retry_after_s = retry_after_s
        self._schedulers: dict[str, object] = {}
        self._failures: dict[str, tuple[float, str]] = {}
        self._loading: set[str] = set()
        self._lock = threading.Lock()
        self._on_demand: dict[str, threading.Event] = {}  # loads started by a first request
        self._on_demand_lock = threading.Lock()

    def scheduler(self, name: str, wait_s: float | None = None):  # type: ignore[no-untyped-def]
        """The engine's scheduler, loading the engine first if needed: here (``wait_s`` None),
        or on a thread of its own, waited for at most ``wait_s`` seconds."""
        found = self._schedulers.get(name)
        if found is not None:
            return found
        if name in self._loading:
            raise EngineStarting(f"engine {name!r} is still loading; retry shortly")
        if wait_s is None or name not in self.specs:
            with self._lock:
                if name not in self._schedulers:
                    self._schedulers[name] = self._load(name)
                return self._schedulers[name]
        if not self._load_on_demand(name).wait(max(0.0, wait_s)):
            raise EngineStarting(f"engine {name!r} is still loading; retry shortly")
        found = self._schedulers.get(name)
        if found is None:
            failed = self._failures.get(name)
            raise EngineUnavailable(failed[1] if failed else f"engine {name!r} failed to load")
        return found

    def _load_on_demand(self, name: str) -> threading.Event:
        """The event set when the load of ``name`` (started now unless one runs) has ended."""
        with self._on_demand_lock:
            event = self._on_demand.get(name)
            if event is not None:
                return event
            event = self._on_demand[name] = threading.Event()

        def load() -> None:
            try:
                with self._lock:
                    if name not in self._schedulers:
                        self._schedulers[name] = self._load(name)
            except EngineError:
                pass  # remembered in _failures and logged; the waiting callers are told
            finally:
                with self._on_demand_lock:
                    self._on_demand.pop(name, None)
                event.set()

        threading.Thread(target=load, name=f"engine-load-{name}", daemon=True).start()
        return event

    def _load(self, name: str):  # type: ignore[no-untyped-def]
        spec = self.specs.get(name)
        if spec is None:
            raise EngineUnavailable(f"engine {name!r} is not registered in this process")
        failed = self._failures.get(name)
        if failed is not None and time.monotonic() - failed[0] < self.retry_after_s:
            raise EngineUnavailable(failed[1])
        from engines.continuous import ContinuousBatchingScheduler
        from engines.runtime import load_engine
        from engines.scheduler import BatchingScheduler

        started = time.perf_counter()
        try:
            engine = load_engine(spec)
        except Exception as exc:
            message = f"engine {name!r} failed to load from {spec.checkpoint}: {type(exc).__name__}: {exc}"
            log.error(message)
            self._failures[name] = (time.monotonic(), message)
            raise EngineUnavailable(message) from exc
        log.info("engine %s loaded in %.1fs on %s", name, time.perf_counter() - started, spec.device)
        kind = ContinuousBatchingScheduler if spec.scheduler == "continuous" else BatchingScheduler
        return kind(engine)

    def preload(self, *names: str) -> None:
        for name in names:
            self.scheduler(name)

    def start_loading(self, names: list[str] | None = None) -> threading.Thread:
        """Load ``names`` (default: every spec that says ``preload``) one after another on a
        background thread; the others load on first use."""
        default = [n for n, spec in self.specs.items() if spec.preload]
        todo = [n for n in (names if names is not None else default) if n not in self._schedulers]
        self._loading.update(todo)

        def load_all() -> None:
            for name in todo:
                try:
                    with self._lock:
                        if name not in self._schedulers:
                            self._schedulers[name] = self._load(name)
                except EngineUnavailable:
                    pass  # remembered in _failures and logged; its requests fail fast
                finally:
                    self._loading.discard(name)

        thread = threading.Thread(target=load_all, name="engine-preload", daemon=True)
        thread.start()
        return thread

    def states(self) -> dict[str, str]:
        """Per engine: ready, loading, failing (its last load failed; the reason is in the log and
        in :meth:`problems`) or idle (loads on first use)."""
        out = {}
        for name in self.specs:
            if name in self._schedulers:
                out[name] = "ready"
            elif name in self._loading or name in self._on_demand:
                out[name] = "loading"
            elif name in self._failures:
                out[name] = "failing"
            else:
                out[name] = "idle"
        return out

    def problems(self) -> dict[str, str]:
        """Why each failing engine is: its last load failure."""
        return {name: message for name, (_, message) in self._failures.items() if name not in self._schedulers}

    def queue_depth(self, name: str) -> int:
        scheduler = self._schedulers.get(name)
        return scheduler.queue_depth() if scheduler is not None else 0  # type: ignore[attr-defined]

    def close(self) -> None:
        with self._lock:
            schedulers, self._schedulers = self._schedulers, {}
        for scheduler in schedulers.values():
            scheduler.close(drain=True, timeout=30)  # type: ignore[attr-defined]
            scheduler.engine.close()  # type: ignore[attr-defined]
