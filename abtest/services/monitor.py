"""The guardrail monitor: checks every running experiment's guardrails on a schedule.

It runs as a daemon thread in each API process. With a broker configured (production, many
API processes), each round first takes a Redis lock (``SET NX EX``) so exactly one process in
the fleet checks per interval; in embedded mode there is one process and no lock is needed.
A breach pauses the treatment (see :mod:`abtest.services.guardrails`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from ..db import Database
from .guardrails import check_all_running

__all__ = ["GuardrailMonitor", "redis_round_lock"]

log = logging.getLogger(__name__)


def redis_round_lock(url: str, interval_s: float) -> Callable[[], bool]:
    """A function that returns True for at most one caller per interval across processes."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    owner = f"{os.uname().nodename}:{os.getpid()}"

    def acquire() -> bool:
        try:
            return bool(client.set("abtest:guardrail-monitor", owner, nx=True, ex=max(1, int(interval_s * 0.9))))
        except redis.RedisError:
            log.warning("guardrail monitor: Redis unreachable, skipping this round")
            return False

    return acquire


class GuardrailMonitor:
    def __init__(self, db: Database, interval_s: float, acquire: Callable[[], bool] | None = None,
                 on_pause: Callable[[], None] | None = None) -> None:
        self.db, self.interval_s, self.acquire = db, interval_s, acquire or (lambda: True)
        self.on_pause = on_pause or (lambda: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="guardrail-monitor", daemon=True)

    def start(self) -> "GuardrailMonitor":
        self._thread.start()
        return self

    def run_once(self) -> int:
        """One round; returns how many experiments had their treatment paused."""
        if not self.acquire():
            return 0
        paused = sum(check.paused for check in check_all_running(self.db))
        if paused:
            self.on_pause()  # this process stops serving the treatment at once, others within the cache TTL
        return paused

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                paused = self.run_once()
                if paused:
                    log.warning("guardrail monitor paused %d treatment(s)", paused)
            except Exception:  # noqa: BLE001 - the monitor must outlive a bad round
                log.exception("guardrail round failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
