"""The threads behind ``Client(..., evaluation="local")``: definitions refresh and push.

:class:`Refresher` is one daemon thread that, every ``flush_interval``, hands the aggregated
exposures to the exposure pipeline and, every ``refresh_interval`` (or at once when woken by
a push), asks for the definitions with ``If-None-Match``. :class:`PushListener` (``push=True``)
reads the server-sent-event stream and wakes the refresher when the server announces a
version the client does not have; a broken stream is reopened after a backoff, and polling
goes on meanwhile. Neither holds a reference to the client, so an abandoned client can still
be garbage-collected (its finalizer stops them).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

import httpx

from ._local import DEFINITIONS_PATH, STREAM_PATH, LocalEvaluator

__all__ = ["fetch_definitions", "Refresher", "PushListener"]

log = logging.getLogger("abtest.client")


def fetch_definitions(http: httpx.Client, headers: dict[str, str], evaluator: LocalEvaluator,
                      timeout: float) -> None:
    """One definitions request; every outcome is recorded in ``evaluator`` (never raises)."""
    try:
        response = http.get(DEFINITIONS_PATH, headers={**headers, **evaluator.request_headers()},
                            timeout=timeout)
    except httpx.HTTPError as exc:
        evaluator.failed(f"transport: {type(exc).__name__}: {exc}")
        return
    if evaluator.accept(response):
        log.debug("abtest: definitions version %s loaded", evaluator.version)


class Refresher:
    def __init__(self, fetch: Callable[[], None], drain: Callable[[], None], *,
                 refresh_interval: float, flush_interval: float) -> None:
        self._fetch, self._drain = fetch, drain
        self.refresh_interval, self.flush_interval = refresh_interval, flush_interval
        self._wake, self._stop = threading.Event(), threading.Event()
        self._refresh_now = False
        self.refreshes = 0  # definitions requests made by this thread
        self._thread = threading.Thread(target=self._run, name="abtest-definitions", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Refresh now (a push said the definitions changed)."""
        self._refresh_now = True
        self._wake.set()

    def drain_soon(self) -> None:
        """Hand the exposures to the pipeline now (the aggregate is large), without a refresh."""
        if not self._wake.is_set():  # called on every assign while the aggregate is large
            self._wake.set()

    def _run(self) -> None:
        clock = time.monotonic
        next_refresh = clock() + self.refresh_interval
        while not self._stop.is_set():
            self._wake.wait(max(0.0, min(next_refresh - clock(), self.flush_interval)))
            if self._stop.is_set():
                return
            self._wake.clear()
            pushed, self._refresh_now = self._refresh_now, False
            try:
                self._drain()
                if pushed or clock() >= next_refresh:
                    next_refresh = clock() + self.refresh_interval
                    self._fetch()
                    self.refreshes += 1
            except Exception:  # noqa: BLE001 - the thread must outlive any one failure
                log.exception("abtest: definitions refresh failed")

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


class PushListener:
    """Reads ``GET /v1/sdk/definitions/stream``; ``on_version(version)`` for each announcement."""

    def __init__(self, http: httpx.Client, headers: dict[str, str], on_version: Callable[[str], None], *,
                 connect_timeout: float, backoff_s: float = 1.0) -> None:
        self._http, self._headers, self._on_version = http, headers, on_version
        self._timeout = httpx.Timeout(connect_timeout, read=60.0)  # keep-alives come every 15 s
        self._backoff_s = backoff_s
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="abtest-definitions-push", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._http.stream("GET", STREAM_PATH, headers=self._headers, timeout=self._timeout) as r:
                    if r.status_code != 200:
                        raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request, response=r)
                    self.connected.set()
                    for line in r.iter_lines():
                        if self._stop.is_set():
                            return
                        if line.startswith("data:"):
                            version = json.loads(line[5:]).get("version")
                            if isinstance(version, str):
                                self._on_version(version)
            except Exception as exc:  # noqa: BLE001 - reconnect after any failure
                log.debug("abtest: definitions stream broke (%s); reconnecting", exc)
            finally:
                self.connected.clear()
            self._stop.wait(self._backoff_s)

    def stop(self) -> None:
        """Stops at the next line or reconnect (a daemon thread: never waited for)."""
        self._stop.set()
