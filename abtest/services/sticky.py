"""The server's side of sticky bucketing: where it reads stored assignments, and how they
are written with the exposures.

Every fresh assignment of a sticky experiment (server-side, or sent by a locally evaluating
client with its exposure) becomes a ``sticky_assignments`` row in the outcome log's
transaction (:func:`sticky_insert`, first one wins). The assigner reads them through a
:class:`~abtest.client.sticky.StickyStore`: :class:`DatabaseStickyStore` (that table) by
default, or a Redis one (``ABTEST_STICKY_REDIS_URL``) shared with clients; always behind
:class:`~abtest.client.sticky.GuardedSticky`, so a failing store means plain hashing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..client.sticky import GuardedSticky, RedisStickyStore, StickyStore
from ..config import Settings
from ..db import Database
from ..models import Experiment, StickyAssignment

__all__ = ["DatabaseStickyStore", "sticky_insert", "sticky_rows", "server_sticky"]


class DatabaseStickyStore(StickyStore):
    """Reads ``sticky_assignments``; ``save`` is a no-op (the outcome log writes the row with the
    exposure, in the same transaction)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, experiment: str, unit_id: str) -> str | None:
        with self.db.session() as session:
            return session.scalar(
                select(StickyAssignment.variant).join(Experiment, Experiment.id == StickyAssignment.experiment_id)
                .where(Experiment.key == experiment, StickyAssignment.unit_id == unit_id))

    def save(self, experiment: str, unit_id: str, variant: str) -> None:
        return None


def sticky_insert(dialect: str):  # type: ignore[no-untyped-def]
    """INSERT of sticky rows that keeps the row already there (the first assignment wins)."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(StickyAssignment).on_conflict_do_nothing(index_elements=["experiment_id", "unit_id"])


def sticky_rows(items: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Rows of the exposures flagged as fresh sticky assignments (the 7th item, True; the 6th is
    the unit's segments), one per (experiment, unit), the earliest first, in key order."""
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for item in items:
        if len(item) > 6 and item[6]:
            exp_id, phase, unit, variant, seen = item[:5]
            held = rows.get((exp_id, unit))
            if held is None or seen < held["assigned_at"]:
                rows[(exp_id, unit)] = {"experiment_id": exp_id, "unit_id": unit, "variant": variant,
                                        "phase": phase, "assigned_at": seen}
    return [rows[key] for key in sorted(rows)]


def server_sticky(settings: Settings, db: Database) -> GuardedSticky:
    store: StickyStore = (RedisStickyStore.from_url(settings.sticky_redis_url) if settings.sticky_redis_url
                          else DatabaseStickyStore(db))
    return GuardedSticky(store)
