"""Dependency probes: know within a second that the database or the broker stopped answering.

A :class:`Probe` pings one dependency in the background every ``interval_s``; :meth:`Probe.up`
answers at once from what the pings saw, so a health check or a request gate never waits on a
dependency that hangs. A dependency is down when its last ping failed, or when a ping has been
under way for longer than ``stale_s`` (a hung server accepts a connection and never answers).
``on_down`` runs on the probe's thread each round while the dependency is down (the database
uses it to free the request threads stuck on a hung server); the first good ping marks it up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

__all__ = ["Probe"]

log = logging.getLogger(__name__)


class Probe:
    def __init__(self, name: str, ping: Callable[[], None], *, interval_s: float = 0.1, stale_s: float = 0.75,
                 on_down: Callable[[], None] | None = None) -> None:
        self.name, self.ping, self.interval_s, self.stale_s, self.on_down = name, ping, interval_s, stale_s, on_down
        self._error: str | None = None
        self._down_since: float | None = None
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ping-{name}")
        self._thread = threading.Thread(target=self._run, name=f"probe-{name}", daemon=True)
        self._thread.start()

    def up(self) -> bool:
        return self._error is None

    def report(self, error: str) -> None:
        """A caller saw the dependency fail: down now, until the next good ping."""
        self._mark(error)

    def reason(self) -> str | None:
        """None when up; else why, and for how long (for /healthz and 503 messages)."""
        error, since = self._error, self._down_since
        if error is None:
            return None
        return f"{error} (for {time.monotonic() - since:.1f}s)" if since is not None else error

    def _run(self) -> None:
        pending: Future[None] | None = None
        started = 0.0
        while not self._stop.is_set():
            round_start = time.monotonic()
            if pending is None:
                pending, started = self._pool.submit(self.ping), round_start
            try:  # wake in time to call a hanging ping stale as soon as it is
                pending.result(timeout=max(0.01, min(self.interval_s, started + self.stale_s + 0.01 - round_start)))
                pending = None
                self._mark(None)
            except FutureTimeout:
                if time.monotonic() - started > self.stale_s:
                    self._mark(f"no answer within {self.stale_s:g}s")
            except Exception as exc:  # noqa: BLE001 - any failure of the ping means down
                pending = None
                self._mark(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}".rstrip(": "))
            if self._error is not None and self.on_down is not None:
                try:
                    self.on_down()
                except Exception:  # noqa: BLE001 - the probe must keep running
                    log.exception("probe %s: on_down failed", self.name)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - round_start)))

    def _mark(self, error: str | None) -> None:
        if error is None and self._error is not None:
            log.warning("%s is reachable again", self.name)
            self._down_since = None
        elif error is not None and self._error is None:
            log.error("%s is unreachable: %s", self.name, error)
            self._down_since = time.monotonic()
        self._error = error

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._pool.shutdown(wait=False, cancel_futures=True)
