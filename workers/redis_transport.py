"""kombu's Redis transport, with one client per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` object (over its shared connection pool) for
every publish, acknowledgement and queue operation; with redis-py 8 that construction costs
about 50 us of Python under the GIL, several times per request, on both the API (publish) and
the worker (reserve, ack), where it competes with the engine's own Python between kernels.
A ``redis.Redis`` over a connection pool is safe to share between threads (each command checks
a connection out of the pool), so each channel keeps one, rebuilt whenever kombu replaces the
pool (after a lost connection). Everything else is kombu's.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

__all__ = ["Transport"]


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client=None):  # type: ignore[no-untyped-def]
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel
