"""The assigner: cached experiment configs and durable exposure logging around the evaluator.

``Assigner.assign`` answers from an in-process cache of :class:`ExperimentConfig` snapshots
(refreshed after ``cache_ttl_s``; writes in this process invalidate at once) and records an
exposure for every enrolled unit (and a holdout exposure for every unit its layer's holdout
keeps on the control, :class:`~abtest.services.layers.HoldoutItem`) through ``record`` (the outcome log's group commit, see
:mod:`abtest.services.outcomes`), which returns only once the exposure is committed: an
acknowledged assignment survives a crash of the process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any


from ..db import Database, is_outage, merging_upsert
from ..client.sticky import GuardedSticky
from ..evaluator import Assignment, ExperimentConfig, assign, in_holdout, should_store
from ..models import Exposure
from ..validation.experiments import segment_levels
from .experiments import get_experiment, to_config
from .layers import HoldoutItem, holdout_share

__all__ = ["ConfigCache", "Assigner", "exposure_upsert", "aggregate_exposures"]

class ConfigCache:
    """Experiment configs for ``ttl`` seconds; while the database cannot be asked, a cached
    config is served for up to ``grace`` seconds more (what was running keeps running)."""

    def __init__(self, db: Database, ttl: float, grace: float = 0.0) -> None:
        self.db, self.ttl, self.grace = db, ttl, grace
        self._entries: dict[str, tuple[float, ExperimentConfig]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> ExperimentConfig:
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            with self.db.session() as session:
                exp = get_experiment(session, key)
                config = to_config(exp, holdout_share(session, exp.layer))
        except Exception as exc:
            if hit is not None and is_outage(exc) and now - hit[0] < self.ttl + self.grace:
                return hit[1]
            raise
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
    return merging_upsert(Exposure, dialect)


def aggregate_exposures(items: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """(experiment_id, phase, unit_id, variant, seen[, segments[, sticky[, count, first_seen]]])
    items to one row per unit: an upsert statement must not touch the same row twice. Rows come
    in key order, so concurrent writers lock the same rows in the same order (no deadlock between
    API processes). The segments are the unit's first (an upsert never changes them);
    ``count``/``first_seen`` are a client's aggregate of several exposures."""
    merged: dict[tuple[int, int, str], dict[str, Any]] = {}
    for item in items:
        exp_id, phase, unit, variant, seen = item[:5]
        segments = item[5] if len(item) > 5 else None
        count = item[7] if len(item) > 7 else 1
        first = item[8] if len(item) > 8 else seen
        row = merged.get((exp_id, phase, unit))
        if row is None:
            merged[(exp_id, phase, unit)] = {"experiment_id": exp_id, "phase": phase, "unit_id": unit,
                                             "variant": variant, "first_seen": first, "last_seen": seen,
                                             "count": count, "segments": segments}
        else:
            row["first_seen"], row["last_seen"] = min(row["first_seen"], first), max(row["last_seen"], seen)
            row["count"] += count
    return [merged[key] for key in sorted(merged)]


class Assigner:
    """``sticky``: where sticky experiments' stored assignments are read (and saved); None
    treats every experiment as non-sticky."""

    def __init__(self, configs: ConfigCache, record: Callable[[tuple], None],
                 sticky: GuardedSticky | None = None) -> None:
        self.configs, self._record, self.sticky = configs, record, sticky

    def assign(self, experiment: str, unit_id: str, attributes: Mapping[str, Any] | None = None, *,
               record: bool = True) -> tuple[Assignment, ExperimentConfig]:
        """Assign; with ``record`` the exposure is committed before this returns (callers that
        commit it with their own row, like /v1/infer, pass ``record=False``)."""
        config = self.configs.get(experiment)
        stored = self.sticky.get(config.key, unit_id) if config.sticky and self.sticky is not None else None
        result = assign(config, unit_id, attributes, stored)
        fresh = should_store(config, result)
        if fresh and self.sticky is not None:
            self.sticky.save(config.key, unit_id, result.variant)
        if record and result.in_experiment:
            self._record((config.id, config.phase, unit_id, result.variant, datetime.now(timezone.utc),
                          segment_levels(list(config.dimensions), attributes), fresh))
        elif record and in_holdout(result) and config.layer is not None:
            self._record(HoldoutItem(config.id, config.phase, unit_id, config.layer, datetime.now(timezone.utc)))
        return result, config
