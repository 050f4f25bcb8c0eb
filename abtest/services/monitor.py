"""The monitor: checks running experiments' guardrails and applies due schedules.

It runs as a daemon thread in each API process. With a broker configured (production, many
API processes), each guardrail round first takes a Redis lock (``SET NX EX``) so exactly one
process in the fleet checks per interval; in embedded mode there is one process and no lock is
needed. A breach pauses the treatment (see :mod:`abtest.services.guardrails`).

Schedules (ramp steps, ``start_at``, ``stop_at``: :mod:`abtest.services.scheduler`) are applied
every ``schedule_interval_s`` by every process, without the Redis lock: each change is made
once under the experiment's row lock, whichever monitor gets there first. The time comes from
``clock`` (a fake one in tests); :meth:`GuardrailMonitor.run_schedules` and
:meth:`GuardrailMonitor.run_once` are single rounds that never sleep.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from ..db import Database
from .guardrails import check_all_running
from .scheduler import ScheduleAction, apply_schedules

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


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class GuardrailMonitor:
    """Guardrail rounds every ``interval_s`` (0: none) and schedule rounds every
    ``schedule_interval_s`` (None: ``interval_s``; 0: none). ``on_pause`` runs after a round
    paused a treatment and ``on_change`` (default ``on_pause``) after a schedule changed an
    experiment, so this process serves the change at once."""

    def __init__(self, db: Database, interval_s: float, acquire: Callable[[], bool] | None = None,
                 on_pause: Callable[[], None] | None = None, *, schedule_interval_s: float | None = None,
                 clock: Callable[[], datetime] = _utc_now, on_change: Callable[[], None] | None = None) -> None:
        self.db, self.interval_s, self.acquire = db, interval_s, acquire or (lambda: True)
        self.schedule_interval_s = interval_s if schedule_interval_s is None else schedule_interval_s
        self.on_pause = on_pause or (lambda: None)
        self.on_change = on_change or self.on_pause
        self.clock = clock
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

    def run_schedules(self) -> list[ScheduleAction]:
        """One schedule round at ``clock()``; the actions taken (and the failures, logged)."""
        actions = apply_schedules(self.db, self.clock())
        if any(a.action is not None for a in actions):
            self.on_change()
        return actions

    def _run(self) -> None:
        rounds = [(period, round_) for period, round_ in ((self.schedule_interval_s, self._schedule_round),
                                                          (self.interval_s, self._guardrail_round)) if period > 0]
        if not rounds:
            return
        tick = min(period for period, _ in rounds)
        due = [time.monotonic() + period for period, _ in rounds]
        while not self._stop.wait(tick):
            for i, (period, round_) in enumerate(rounds):
                if time.monotonic() >= due[i] - tick / 2:
                    due[i] = time.monotonic() + period
                    round_()

    def _schedule_round(self) -> None:
        try:
            for a in self.run_schedules():
                if a.action is not None:
                    log.info("schedule: %s %s %s", a.experiment, a.action, a.changes)
        except Exception:  # noqa: BLE001 - the monitor must outlive a bad round
            log.exception("schedule round failed")

    def _guardrail_round(self) -> None:
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
