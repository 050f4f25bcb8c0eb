"""Which engine queues have a live consumer: heartbeats of the workers in Redis.

A worker, once it consumes its queues (Celery's ``worker_ready``), adds itself to the sorted
set ``abtest:consumers:<queue>`` with the time as its score, every second, and removes itself
when it shuts down; a worker killed with ``kill -9`` simply stops beating. The API
(:class:`ConsumerView`) counts the members seen within ``stale_s`` seconds, one ``ZCOUNT`` per
queue at most once a second, so ``/healthz`` and ``/v1/infer`` never wait on it for long.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

__all__ = ["Heartbeat", "ConsumerView", "consumers_key"]

log = logging.getLogger(__name__)
BEAT_S = 1.0


def consumers_key(queue: str) -> str:
    return f"abtest:consumers:{queue}"


class Heartbeat:
    """A worker's beat on the queues it consumes (a daemon thread; :meth:`stop` removes it)."""

    def __init__(self, url: str, worker: str, queues: list[str], interval_s: float = BEAT_S) -> None:
        self.redis = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self.worker, self.queues, self.interval_s = worker, list(queues), interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consumer-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for queue in self.queues:
            pipe.zadd(consumers_key(queue), {self.worker: now})
            pipe.zremrangebyscore(consumers_key(queue), 0, now - 3600)  # long-gone workers
            pipe.expire(consumers_key(queue), 3600)
        pipe.execute()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except (redis.RedisError, OSError) as exc:  # the broker is back soon, or the worker stops
                log.warning("consumer heartbeat failed: %s", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        try:
            for queue in self.queues:
                self.redis.zrem(consumers_key(queue), self.worker)
        except (redis.RedisError, OSError):
            pass  # its entries go stale on their own


class ConsumerView:
    """The API's view: how many workers beat on a queue within ``stale_s`` seconds (cached 1 s)."""

    def __init__(self, url: str, stale_s: float, cache_s: float = 1.0) -> None:
        self.redis = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        self.stale_s, self.cache_s = stale_s, cache_s
        self._cache: dict[str, tuple[float, int | None]] = {}

    def consumers(self, queue: str) -> int | None:
        """Workers consuming ``queue`` now; None when Redis cannot say (the broker probe tells why)."""
        return self.counts([queue])[queue]

    def counts(self, queues: list[str]) -> dict[str, int | None]:
        """:meth:`consumers` of several queues, the stale ones asked in one round trip."""
        now = time.monotonic()
        out: dict[str, int | None] = {}
        ask = []
        for queue in queues:
            hit = self._cache.get(queue)
            if hit is not None and now - hit[0] < self.cache_s:
                out[queue] = hit[1]
            else:
                ask.append(queue)
        if ask:
            since = time.time() - self.stale_s
            try:
                pipe = self.redis.pipeline(transaction=False)
                for queue in ask:
                    pipe.zcount(consumers_key(queue), since, "+inf")
                answers: list[int | None] = [int(n) for n in pipe.execute()]
            except (redis.RedisError, OSError):
                answers = [None] * len(ask)
            for queue, count in zip(ask, answers):
                self._cache[queue] = (now, count)
                out[queue] = count
        return out
