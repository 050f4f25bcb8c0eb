"""The outcome log: request rows and exposures, written by group commit before anyone is answered.

A request handler calls :meth:`OutcomeLog.write` (an inference outcome, with the exposure it
implies) or :meth:`OutcomeLog.write_exposure` (an assignment), which queues the entry, then takes
the commit lock and, unless another thread already committed its entry meanwhile, commits
*everything* queued at that moment in one transaction (``INSERT ... ON CONFLICT (request_id) DO
NOTHING`` plus the report rollups of the rows that were new, :mod:`abtest.reports.rollups`,
and one exposure upsert). While one thread commits, the others queue up behind the lock and the
next one commits them all together: under load many requests share one transaction, no extra
thread sits between a request and its commit, and an answer is only given once its data is
durable. So ``kill -9`` of the process loses nothing that was acknowledged, and a replay (same
request id) never duplicates a row.

Guarantees when something goes wrong:

* **No entry fails its neighbours.** A commit that fails for a reason other than an outage
  (a row the database refuses) is split in halves and retried until the bad entries stand
  alone; the others commit, each bad entry's caller gets :class:`~abtest.errors.BadRequest`
  ``unstorable``, and :attr:`OutcomeLog.dropped` counts them.
* **Bounded waits.** A caller waits at most ``timeout`` seconds. An entry nobody started
  committing by then is withdrawn (it will never be written) and the caller gets 503 with
  ``Retry-After``; a database that cannot be reached fails the whole batch with the same 503.

Shadow copies, whose caller does not wait, use :meth:`OutcomeLog.write_nowait`; everything
queued is flushed by :meth:`OutcomeLog.close`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ..db import Database, is_outage
from ..errors import BadRequest, ServiceUnavailable
from ..models import RequestLog
from .assigner import aggregate_exposures, exposure_upsert
from .layers import HoldoutItem, aggregate_holdouts, holdout_upsert
from .sticky import sticky_insert, sticky_rows
from ..reports.rollups import insert_outcomes

__all__ = ["OutcomeLog", "STATUSES", "ExposureItem"]

log = logging.getLogger(__name__)

# ok: the engine answered; rejected: refused for the request itself (too long, overloaded);
# error / timeout: the engine failed or did not answer; unavailable: infrastructure (broker,
# an engine still loading) failed before any engine decided - not the engine's error rate;
# cancelled: a streaming client went away (not an error; see abtest.reports.statuses).
STATUSES = ("ok", "error", "timeout", "rejected", "unavailable", "cancelled")
_COLUMNS = tuple(c.name for c in RequestLog.__table__.columns)

# An exposure to upsert: (experiment_id, phase, unit_id, variant, seen[, segment levels[, sticky[,
# count, first_seen]]]); not the Exposure model. ``sticky`` True: a fresh assignment of a sticky
# experiment, stored with it; ``count``/``first_seen``: a client's aggregate of several. A
# :class:`~abtest.services.layers.HoldoutItem` is a holdout exposure (``holdout_exposures``).
ExposureItem = tuple[Any, ...]
_Entry = tuple["dict[str, Any] | None", "ExposureItem | None", "Future[None]"]


class OutcomeLog:
    def __init__(self, db: Database, *, max_batch: int = 5000) -> None:
        self.db, self.max_batch = db, max_batch
        self._queue: list[_Entry] = []
        self._cond = threading.Condition()
        self._commit_lock = threading.Lock()
        self._closed = False
        self._exposures = exposure_upsert(db.dialect)
        self._sticky = sticky_insert(db.dialect)
        self._holdouts = holdout_upsert(db.dialect)
        self.dropped: Counter[str] = Counter()  # entries the database refused: "requests" / "exposures"
        self._thread = threading.Thread(target=self._run, name="outcome-log", daemon=True)
        self._thread.start()

    def write(self, row: Mapping[str, Any] | None, exposure: ExposureItem | None = None, timeout: float = 5.0) -> None:
        """Queue ``row`` (and ``exposure``) and return once committed; raises if it was not."""
        done = self._enqueue(row, exposure, wake_writer=False)
        deadline = time.monotonic() + timeout
        while not done.done():
            if not self._commit_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                self._give_up(done)
                break
            try:
                while not done.done():
                    self._drain()
            finally:
                self._commit_lock.release()
        done.result(0)

    def write_exposure(self, exposure: ExposureItem, timeout: float = 5.0) -> None:
        self.write(None, exposure, timeout)

    def write_nowait(self, row: Mapping[str, Any], exposure: ExposureItem | None = None) -> Future[None]:
        """Queue ``row`` for the background writer (callers that do not wait, e.g. shadows)."""
        return self._enqueue(row, exposure, wake_writer=True)

    def _enqueue(self, row: Mapping[str, Any] | None, exposure: ExposureItem | None, wake_writer: bool) -> Future[None]:
        done: Future[None] = Future()
        full = None if row is None else {name: row.get(name) for name in _COLUMNS}
        with self._cond:
            if self._closed:
                raise ServiceUnavailable("the service is shutting down", retry_after=1)
            self._queue.append((full, exposure, done))
            if wake_writer:
                self._cond.notify()
        return done

    def _give_up(self, done: Future[None]) -> None:
        """The caller's time is up: withdraw its entry, or wait a moment if it is being committed."""
        with self._cond:
            for i, entry in enumerate(self._queue):
                if entry[2] is done:
                    del self._queue[i]
                    done.set_exception(ServiceUnavailable(
                        "the database did not commit in time; nothing was stored", retry_after=1))
                    return
        try:  # taken by a commit under way: its result comes when the database answers
            done.result(timeout=1.0)
        except FutureTimeout:
            raise ServiceUnavailable("the database did not answer in time; the write may or may not "
                                     "have been stored", retry_after=1) from None

    def _drain(self) -> None:
        """Commit what is queued now (caller holds the commit lock)."""
        with self._cond:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
        if batch:
            self._commit(batch)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    return
            with self._commit_lock:
                self._drain()

    def _commit(self, batch: list[_Entry]) -> None:
        try:
            self._transaction(batch)
        except Exception as exc:  # noqa: BLE001 - every waiter learns of its own outcome
            if is_outage(exc):
                log.error("outcome log: database unavailable, %d entries not stored: %s", len(batch),
                          type(exc).__name__)
                failure = ServiceUnavailable("the database is unavailable", retry_after=1)
                for *_, done in batch:
                    done.set_exception(failure)
            elif len(batch) > 1:  # isolate the entries the database refuses; the others commit
                mid = len(batch) // 2
                self._commit(batch[:mid])
                self._commit(batch[mid:])
            else:
                self._refuse(batch[0], exc)
            return
        for *_, done in batch:
            done.set_result(None)

    def _transaction(self, batch: list[_Entry]) -> None:
        rows = [row for row, _, _ in batch if row is not None]
        items = [e for _, e, _ in batch if e is not None and not isinstance(e, HoldoutItem)]
        holdouts = aggregate_holdouts(e for _, e, _ in batch if isinstance(e, HoldoutItem))
        exposures, sticky = aggregate_exposures(items), sticky_rows(items)
        with self.db.transaction() as session:
            if rows:
                insert_outcomes(session, rows)
            if exposures:
                session.execute(self._exposures, exposures)
            if sticky:
                session.execute(self._sticky, sticky)
            if holdouts:
                session.execute(self._holdouts, holdouts)

    def _refuse(self, entry: _Entry, exc: Exception) -> None:
        row, exposure, done = entry
        kind = "requests" if row is not None else "exposures"
        self.dropped[kind] += 1
        ident = row["request_id"] if row is not None else exposure
        log.error("outcome log: the database refused one %s entry (%r), dropped: %s", kind, ident, exc)
        done.set_exception(BadRequest("the request's data cannot be stored", code="unstorable",
                                      details={"table": kind}))

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
