"""Rate limits without Flask: a per-client sliding window of failed authentications.

:class:`FailureLimiter` keeps, for each client key (the API uses the remote address), the
times of its last ``limit`` failures within ``window_s`` seconds. A client with ``limit``
failures in the window is refused (:class:`~abtest.errors.RateLimited`, 429 with
``Retry-After``) until the oldest of them leaves the window, whatever it sends: the check runs
before any key lookup, so a refused request costs no database query. Refused requests are not
counted, so a client that keeps trying is let in again one window after its failures.

Memory is bounded: at most ``limit`` timestamps per client and ``max_clients`` clients; past
that the client whose last failure is oldest is forgotten first. The state is per process
(each server process counts its own failures).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from ..errors import RateLimited

__all__ = ["FailureLimiter"]

log = logging.getLogger(__name__)


class FailureLimiter:
    """Thread-safe sliding-window limiter of failures per client; ``limit`` 0 turns it off."""

    def __init__(self, limit: int, window_s: float, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = max(0, int(limit))
        self.window_s = max(0.0, float(window_s))
        self.max_clients = max(1, int(max_clients))
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()  # oldest last failure first
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.limit > 0 and self.window_s > 0

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may try now."""
        if not self.enabled:
            return None
        now = self._clock()
        with self._lock:
            times = self._failures.get(client)
            if times is None:
                return None
            self._expire(times, now)
            if not times:
                del self._failures[client]
                return None
            if len(times) < self.limit:
                return None
            return max(0.0, times[0] + self.window_s - now)

    def check(self, client: str) -> None:
        """Raise :class:`RateLimited` (429) when ``client`` is over the limit."""
        wait = self.retry_after(client)
        if wait is not None:
            raise RateLimited("too many failed authentications from this address; retry later",
                              retry_after=wait, details={"retry_after_s": round(wait, 3)})

    def failed(self, client: str) -> None:
        """Record one failure of ``client``."""
        if not self.enabled:
            return
        now = self._clock()
        with self._lock:
            times = self._failures.get(client)
            if times is None:
                times = self._failures[client] = deque(maxlen=self.limit)
            else:
                self._failures.move_to_end(client)
                self._expire(times, now)
            times.append(now)
            reached = len(times) == self.limit
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        if reached:
            log.warning("client %s reached %d failed authentications in %gs; refusing it for now",
                        client, self.limit, self.window_s, extra={"client": client})

    def _expire(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window_s:
            times.popleft()

    def __len__(self) -> int:
        with self._lock:
            return len(self._failures)
