"""Assignment as a service: cached experiment configs and write-behind exposure logging.

``Assigner.assign`` answers from an in-process cache of :class:`ExperimentConfig` snapshots
(refreshed after ``cache_ttl_s``; writes in this process invalidate at once) and records an
exposure for every enrolled unit in :class:`ExposureWriter`, which aggregates them in memory
and upserts them in one statement per flush (on size, on interval and on shutdown), so the
database sees one transaction per flush rather than one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..assignment import Assignment, ExperimentConfig, assign
from ..db import Database
from ..models import Exposure
from .experiments import get_experiment, to_config

__all__ = ["ConfigCache", "ExposureWriter", "Assigner", "exposure_upsert", "aggregate_exposures"]

log = logging.getLogger(__name__)


class ConfigCache:
    def __init__(self, db: Database, ttl: float) -> None:
        self.db, self.ttl = db, ttl
        self._entries: dict[str, tuple[float, ExperimentConfig]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> ExperimentConfig:
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        with self.db.session() as session:
            config = to_config(get_experiment(session, key))
        with self._lock:
            self._entries[key] = (now, config)
        return config

    def invalidate(self, key: str | None = None) -> None:
        with self._lock:
            if key is None:
                self._entries.clear()
            else:
                self._entries.pop(key, None)


def exposure_upsert(dialect: str):  # type: ignore[no-untyped-def]
    """INSERT of exposure rows that merges into existing ones (count adds up, last_seen moves)."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(Exposure)
    table = Exposure.__table__
    latest = func.max if dialect == "sqlite" else func.greatest
    return stmt.on_conflict_do_update(
        index_elements=["experiment_id", "phase", "unit_id"],
        set_={"last_seen": latest(table.c.last_seen, stmt.excluded.last_seen),
              "count": table.c.count + stmt.excluded.count},
    )


def aggregate_exposures(items: list[tuple[int, int, str, str, datetime]]) -> list[dict[str, Any]]:
    """(experiment_id, phase, unit_id, variant, seen) items to one row per unit: an upsert
    statement must not touch the same row twice. Rows come in key order, so concurrent
    writers lock the same rows in the same order (no deadlock between API processes)."""
    merged: dict[tuple[int, int, str], dict[str, Any]] = {}
    for exp_id, phase, unit, variant, seen in items:
        row = merged.get((exp_id, phase, unit))
        if row is None:
            merged[(exp_id, phase, unit)] = {"experiment_id": exp_id, "phase": phase, "unit_id": unit,
                                             "variant": variant, "first_seen": seen, "last_seen": seen, "count": 1}
        else:
            row["first_seen"], row["last_seen"] = min(row["first_seen"], seen), max(row["last_seen"], seen)
            row["count"] += 1
    return [merged[key] for key in sorted(merged)]


class ExposureWriter:
    """Aggregate exposures in memory; upsert them in one statement per flush."""

    def __init__(self, db: Database, *, interval_s: float, max_pending: int) -> None:
        self.db, self.interval_s, self.max_pending = db, interval_s, max_pending
        # (experiment_id, phase, unit_id) -> [variant, first_seen, last_seen, count]
        self._pending: dict[tuple[int, int, str], list[Any]] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def record(self, experiment_id: int, phase: int, unit_id: str, variant: str) -> None:
        ts = datetime.now(timezone.utc)
        with self._lock:
            entry = self._pending.get((experiment_id, phase, unit_id))
            if entry is None:
                self._pending[(experiment_id, phase, unit_id)] = [variant, ts, ts, 1]
            else:
                entry[2], entry[3] = ts, entry[3] + 1
            size = len(self._pending)
        if self.interval_s <= 0:
            self.flush()
        elif size >= self.max_pending:
            self._wake.set()
        else:
            self._ensure_thread()

    def flush(self) -> int:
        """Write everything pending; returns the number of units written."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return 0
            rows = [
                {"experiment_id": k[0], "phase": k[1], "unit_id": k[2], "variant": v[0],
                 "first_seen": v[1], "last_seen": v[2], "count": v[3]}
                for k, v in batch.items()
            ]
            try:
                with self.db.transaction() as session:
                    session.execute(exposure_upsert(self.db.dialect), rows)
            except Exception:
                log.exception("exposure flush failed; %d units kept for the next flush", len(rows))
                self._requeue(batch)
                raise
            return len(rows)

    def _requeue(self, batch: Mapping[tuple[int, int, str], list[Any]]) -> None:
        with self._lock:
            for key, value in batch.items():
                entry = self._pending.get(key)
                if entry is None:
                    self._pending[key] = value
                else:
                    entry[1], entry[3] = min(entry[1], value[1]), entry[3] + value[3]

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._closed:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="exposure-writer", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # logged in flush; retried next round
                time.sleep(min(self.interval_s, 1.0))

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()


class Assigner:
    def __init__(self, configs: ConfigCache, exposures: ExposureWriter) -> None:
        self.configs, self.exposures = configs, exposures

    def assign(self, experiment: str, unit_id: str, attributes: Mapping[str, Any] | None = None, *,
               record: bool = True) -> tuple[Assignment, ExperimentConfig]:
        """Assign; with ``record`` the exposure goes to the write-behind buffer (callers that
        commit it themselves, like /v1/infer, pass ``record=False``)."""
        config = self.configs.get(experiment)
        result = assign(config, unit_id, attributes)
        if record and result.in_experiment:
            self.exposures.record(config.id, config.phase, unit_id, result.variant)
        return result, config
