"""Sticky bucketing storage: where each unit's variant of a sticky experiment is kept.

A :class:`StickyStore` maps (experiment key, unit id) to a variant key. The server and
locally evaluating clients read it before hashing and save fresh assignments into it
(:func:`abtest.client.evaluation.should_store`), so a unit keeps its variant when the weights
change. Two implementations: :class:`InMemoryStickyStore` (one process; also the test fake)
and :class:`RedisStickyStore` (shared by every process that points at the same Redis).

A store that fails never fails an assignment: :class:`GuardedSticky` turns every error into
"no stored variant" (plain hashing), counts it and logs a warning at most once a minute; after
a failure it leaves the store alone for ``pause_s`` seconds, so an outage costs one timeout,
not one per call. Standard library only (a Redis client is passed in, or built on demand).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

__all__ = ["StickyStore", "InMemoryStickyStore", "RedisStickyStore", "GuardedSticky"]

log = logging.getLogger("abtest.sticky")


class StickyStore(ABC):
    """Stored variants per (experiment, unit). ``save`` keeps the first variant stored."""

    @abstractmethod
    def get(self, experiment: str, unit_id: str) -> str | None: ...

    @abstractmethod
    def save(self, experiment: str, unit_id: str, variant: str) -> None: ...


class InMemoryStickyStore(StickyStore):
    def __init__(self) -> None:
        self._data: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def get(self, experiment: str, unit_id: str) -> str | None:
        return self._data.get((experiment, unit_id))

    def save(self, experiment: str, unit_id: str, variant: str) -> None:
        with self._lock:
            self._data.setdefault((experiment, unit_id), variant)

    def __len__(self) -> int:
        return len(self._data)


class RedisStickyStore(StickyStore):
    """One Redis hash per experiment (``<prefix><experiment>``: unit id -> variant), written
    with HSETNX so that the first assignment stored wins everywhere."""

    def __init__(self, redis: Any, prefix: str = "abtest:sticky:") -> None:
        self.redis, self.prefix = redis, prefix

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.1, prefix: str = "abtest:sticky:") -> "RedisStickyStore":
        """Needs the ``redis`` package (not an SDK dependency: install it to use this store)."""
        import redis  # noqa: PLC0415 - optional

        return cls(redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                        decode_responses=True), prefix)

    def get(self, experiment: str, unit_id: str) -> str | None:
        value = self.redis.hget(self.prefix + experiment, unit_id)
        return value.decode() if isinstance(value, bytes) else value

    def save(self, experiment: str, unit_id: str, variant: str) -> None:
        self.redis.hsetnx(self.prefix + experiment, unit_id, variant)


class GuardedSticky:
    """A store's failures become plain hashing: ``get`` answers None, ``save`` does nothing,
    ``failures`` counts them (see the module doc)."""

    def __init__(self, store: StickyStore, *, pause_s: float = 1.0, clock: Any = time.monotonic) -> None:
        self.store, self.pause_s, self._clock = store, pause_s, clock
        self.failures = 0
        self._until = float("-inf")
        self._warned_at = float("-inf")
        self._lock = threading.Lock()

    def get(self, experiment: str, unit_id: str) -> str | None:
        if self._clock() < self._until:
            self._count(None)
            return None
        try:
            return self.store.get(experiment, unit_id)
        except Exception as exc:  # noqa: BLE001 - any store failure degrades to hashing
            self._count(exc)
            return None

    def save(self, experiment: str, unit_id: str, variant: str) -> None:
        if self._clock() < self._until:
            self._count(None)
            return
        try:
            self.store.save(experiment, unit_id, variant)
        except Exception as exc:  # noqa: BLE001
            self._count(exc)

    def _count(self, exc: Exception | None) -> None:
        with self._lock:
            self.failures += 1
            now = self._clock()
            if exc is not None:
                self._until = now + self.pause_s
            warn = now - self._warned_at >= 60.0
            if warn:
                self._warned_at = now
        if warn:
            log.warning("sticky store unavailable (%s); assigning by plain hashing (%d calls so far)",
                        type(exc).__name__ if exc is not None else "paused after a failure", self.failures)
