"""The outcome log: one ``requests`` row per inference request, written by group commit.

A request handler calls :meth:`OutcomeLog.write`, which queues the row, then takes the commit
lock and, unless another thread already committed its row meanwhile, commits *everything*
queued at that moment in one transaction (``INSERT ... ON CONFLICT (request_id) DO NOTHING``,
plus the report rollups of the rows that were new: :mod:`abtest.services.rollups`).
While one thread commits, the others queue up behind the lock and the next one commits them
all together: under load many requests share one transaction and SQL is not the bottleneck,
no extra thread sits between a request and its commit, and a response is only returned after
its row is durable. A crash can lose no answered request, and a replay (same request id) can
never duplicate a row.

A row may carry the request's exposure (``exposure=(experiment_id, phase, unit_id, variant,
seen)``): it is upserted in the same transaction, so an answered request's exposure is as
durable as its outcome. Shadow copies, whose caller does not wait, use
:meth:`OutcomeLog.write_nowait`; everything queued is flushed by :meth:`OutcomeLog.close`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from ..db import Database
from ..models import RequestLog
from .assign import aggregate_exposures, exposure_upsert
from .rollups import insert_outcomes

__all__ = ["OutcomeLog", "STATUSES"]

log = logging.getLogger(__name__)

STATUSES = ("ok", "error", "timeout", "rejected")
_COLUMNS = tuple(c.name for c in RequestLog.__table__.columns)


class OutcomeLog:
    def __init__(self, db: Database, *, max_batch: int = 5000) -> None:
        self.db, self.max_batch = db, max_batch
        self._queue: list[tuple[dict[str, Any], Any, Future[None]]] = []
        self._cond = threading.Condition()
        self._commit_lock = threading.Lock()
        self._closed = False
        self._exposures = exposure_upsert(db.dialect)
        self._thread = threading.Thread(target=self._run, name="outcome-log", daemon=True)
        self._thread.start()

    def write(self, row: Mapping[str, Any], exposure: Any = None, timeout: float = 30.0) -> None:
        """Queue ``row`` and return once it is committed (raises if the commit failed)."""
        done = self._enqueue(row, exposure, wake_writer=False)
        with self._commit_lock:
            while not done.done():
                self._drain()
        done.result(timeout)

    def write_nowait(self, row: Mapping[str, Any], exposure: Any = None) -> Future[None]:
        """Queue ``row`` for the background writer (callers that do not wait, e.g. shadows)."""
        return self._enqueue(row, exposure, wake_writer=True)

    def _enqueue(self, row: Mapping[str, Any], exposure: Any, wake_writer: bool) -> Future[None]:
        done: Future[None] = Future()
        full = {name: row.get(name) for name in _COLUMNS}
        with self._cond:
            if self._closed:
                raise RuntimeError("the outcome log is closed")
            self._queue.append((full, exposure, done))
            if wake_writer:
                self._cond.notify()
        return done

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

    def _commit(self, batch: list[tuple[dict[str, Any], Any, Future[None]]]) -> None:
        exposures = aggregate_exposures([e for _, e, _ in batch if e is not None])
        try:
            with self.db.transaction() as session:
                insert_outcomes(session, [row for row, _, _ in batch])
                if exposures:
                    session.execute(self._exposures, exposures)
        except Exception as exc:  # every waiter learns of the failure; nothing is half-written
            log.exception("outcome log commit of %d rows failed", len(batch))
            for _, _, done in batch:
                done.set_exception(exc)
            return
        for _, _, done in batch:
            done.set_result(None)

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
