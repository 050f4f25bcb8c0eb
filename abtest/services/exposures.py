"""Exposures sent by locally evaluating clients (``POST /v1/exposures``), counted once each.

A client that evaluates assignments in process aggregates its exposures per (experiment,
phase, unit) and sends them in batches through its lossless pipeline, each item with a fresh
``exposure_id``. A batch is one transaction: the ids go into ``exposure_ids`` with ``ON
CONFLICT DO NOTHING RETURNING``, and only the items whose id is new are merged into
``exposures`` (the same upsert as server-side assignments, so the report's rollups cannot
tell them apart) and, for fresh sticky assignments, into ``sticky_assignments``. A resent
batch (a lost acknowledgement) is therefore counted once. Items are checked one by one
against the experiment (its variants, its current phase); a bad item is rejected, its
siblings are stored.

Item: ``{"exposure_id", "experiment", "phase", "unit_id", "variant", "first_seen",
"last_seen", "count", "sticky", "segments"}`` (``count`` >= 1, default 1; ``sticky`` default
false; times as ISO-8601 or seconds since the epoch). ``segments`` (optional): the unit's levels
of the experiment's dimensions, as the client computed them with the server's own function
(:func:`abtest.client.segments.segment_levels`): an object whose keys are declared dimensions and
whose values are declared levels of them or "other"; stored on the exposure row like those of a
server-side assignment (the first exposure's are kept). ``"holdout": true`` marks a unit that its
layer's holdout kept on the control: it must be in that holdout and name the control, and it
goes to ``holdout_exposures`` (:mod:`abtest.services.layers`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..client.segments import OTHER_LEVEL
from ..db import Database
from ..errors import NotFound, PayloadTooLarge, ValidationError
from ..evaluator import ExperimentConfig, bucket
from ..models import ExposureId
from ..validation import TEXT_ERROR, storable
from .assigner import aggregate_exposures, exposure_upsert
from .events import MAX_BATCH, MAX_FUTURE, IngestResult, Rejection
from .layers import HoldoutItem, aggregate_holdouts, holdout_upsert
from .sticky import sticky_insert, sticky_rows

__all__ = ["ingest_exposures", "EXPOSURE_FIELDS"]

EXPOSURE_FIELDS = frozenset({"exposure_id", "experiment", "phase", "unit_id", "variant", "first_seen",
                             "last_seen", "count", "sticky", "segments", "holdout"})
_LIMITS = {"exposure_id": 64, "experiment": 100, "unit_id": 200, "variant": 100}


class _Bad(Exception):
    """Internal: one item is invalid."""


def _text(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    if type(value) is not str or not value.strip():
        raise _Bad(f"{key}: must be a non-empty string")
    if len(value) > _LIMITS[key]:
        raise _Bad(f"{key}: must be at most {_LIMITS[key]} characters")
    if not storable(value):
        raise _Bad(f"{key}: {TEXT_ERROR}")
    return value


def _time(item: dict[str, Any], key: str, latest: datetime) -> datetime:
    """ISO-8601 (naive means UTC) or seconds since the epoch (what the SDK sends)."""
    raw = item.get(key)
    if type(raw) in (int, float):
        if not 0 <= raw < 253_402_300_800:  # up to 9999-12-31
            raise _Bad(f"{key}: seconds since the epoch must be in [0, 253402300800)")
        ts = datetime.fromtimestamp(raw, timezone.utc)
        if ts > latest:
            raise _Bad(f"{key}: more than {int(MAX_FUTURE.total_seconds() // 60)} minutes in the future")
        return ts
    if type(raw) is not str:
        raise _Bad(f"{key}: must be an ISO-8601 date-time string or seconds since the epoch")
    try:
        ts = datetime.fromisoformat(raw)
        ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise _Bad(f"{key}: must be an ISO-8601 date-time, e.g. 2024-05-01T12:00:00Z") from None
    if ts > latest:
        raise _Bad(f"{key}: more than {int(MAX_FUTURE.total_seconds() // 60)} minutes in the future")
    return ts


def _segments(raw: Any, config: ExperimentConfig) -> dict[str, str] | None:
    """The item's segments: only declared dimensions, each a declared level or "other"."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _Bad("segments: must be an object of dimension -> level")
    levels = {d["attribute"]: d["levels"] for d in config.dimensions}
    for attribute, level in raw.items():
        if attribute not in levels:
            declared = ", ".join(sorted(levels)) or "none"
            raise _Bad(f"segments: {attribute!r} is not a dimension of {config.key!r} (declared: {declared})"
                       if storable(str(attribute)) else f"segments: {TEXT_ERROR}")
        if type(level) is not str or (level != OTHER_LEVEL and level not in levels[attribute]):
            raise _Bad(f"segments.{attribute}: must be one of the dimension's levels or {OTHER_LEVEL!r}")
    return dict(raw) or None


def _item(raw: Any, config_of: Callable[[str], ExperimentConfig], latest: datetime) -> tuple[str, tuple[Any, ...]]:
    if not isinstance(raw, dict):
        raise _Bad("must be an object")
    unknown = sorted(set(raw) - EXPOSURE_FIELDS)
    if unknown:
        raise _Bad(f"{unknown[0]}: unknown field")
    exposure_id, key = _text(raw, "exposure_id"), _text(raw, "experiment")
    unit, variant = _text(raw, "unit_id"), _text(raw, "variant")
    try:
        config = config_of(key)
    except NotFound:
        raise _Bad(f"experiment: no experiment {key!r}") from None
    phase, count, sticky = raw.get("phase"), raw.get("count", 1), raw.get("sticky", False)
    if type(phase) is not int or not 1 <= phase <= config.phase:
        raise _Bad(f"phase: must be an integer in 1..{config.phase} (the experiment's phases)")
    if all(v.key != variant for v in config.variants):
        raise _Bad(f"variant: {variant!r} is not a variant of {key!r}")
    if type(count) is not int or not 1 <= count <= 2**31 - 1:
        raise _Bad("count: must be a positive integer")
    if type(sticky) is not bool:
        raise _Bad("sticky: must be true or false")
    holdout = raw.get("holdout", False)
    if type(holdout) is not bool:
        raise _Bad("holdout: must be true or false")
    first, last = _time(raw, "first_seen", latest), _time(raw, "last_seen", latest)
    if first > last:
        raise _Bad("first_seen: must not be after last_seen")
    if holdout:
        if config.layer is None or not bucket(f"holdout:{config.layer}", unit) < config.holdout:
            raise _Bad(f"holdout: unit {unit!r} is not in the holdout of {key!r}'s layer")
        if variant != config.control.key:
            raise _Bad(f"variant: a holdout unit gets the control {config.control.key!r}")
        return exposure_id, HoldoutItem(config.id, phase, unit, config.layer, last, count, first)
    segments = _segments(raw.get("segments"), config)
    return exposure_id, (config.id, phase, unit, variant, last, segments, sticky and config.sticky, count, first)


def ingest_exposures(db: Database, config_of: Callable[[str], ExperimentConfig], body: Any,
                     now: datetime | None = None) -> IngestResult:
    """Validate and store one ``POST /v1/exposures`` body (``{"exposures": [...]}``)."""
    now = now or datetime.now(timezone.utc)
    if not isinstance(body, dict) or set(body) != {"exposures"} or not isinstance(body["exposures"], list):
        raise ValidationError("exposures", "the body must be {\"exposures\": [...]}")
    raw = body["exposures"]
    if len(raw) > MAX_BATCH:
        raise PayloadTooLarge(f"at most {MAX_BATCH} exposures per request, got {len(raw)}")
    known: dict[str, ExperimentConfig] = {}

    def config(key: str) -> ExperimentConfig:  # one lookup per experiment and batch
        if key not in known:
            known[key] = config_of(key)
        return known[key]

    items: dict[str, tuple[Any, ...]] = {}
    rejected: list[Rejection] = []
    valid = 0
    for i, item in enumerate(raw):
        try:
            exposure_id, entry = _item(item, config, now + MAX_FUTURE)
        except _Bad as exc:
            rejected.append(Rejection(i, str(exc)))
            continue
        valid += 1
        items.setdefault(exposure_id, entry)  # a duplicate inside one batch counts once
    accepted = _store(db, items, now) if items else 0
    return IngestResult(accepted=accepted, duplicates=valid - accepted, rejected=rejected)


def _store(db: Database, items: dict[str, tuple[Any, ...]], now: datetime) -> int:
    insert = pg_insert if db.dialect == "postgresql" else sqlite_insert
    table = ExposureId.__table__
    ids = insert(table).on_conflict_do_nothing(index_elements=["exposure_id"]).returning(table.c.exposure_id)
    with db.transaction() as session:
        conn = session.connection()  # Core: one multi-row INSERT ... RETURNING per batch
        new = set(conn.execute(ids, [{"exposure_id": k, "received_at": now} for k in sorted(items)]).scalars())
        fresh = [items[k] for k in sorted(new)]
        held = [item for item in fresh if isinstance(item, HoldoutItem)]
        fresh = [item for item in fresh if not isinstance(item, HoldoutItem)]
        if held:
            session.execute(holdout_upsert(db.dialect), aggregate_holdouts(held))
        if fresh:
            session.execute(exposure_upsert(db.dialect), aggregate_exposures(fresh))
            sticky = sticky_rows(fresh)
            if sticky:
                session.execute(sticky_insert(db.dialect), sticky)
    return len(new)
