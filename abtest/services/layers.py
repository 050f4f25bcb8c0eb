"""Layers and their holdouts: a share of a layer's units kept on the control everywhere.

A mutual-exclusion layer exists as soon as an experiment names it; a ``layers`` row adds its
holdout share (none: no holdout). The share is one number per layer, not a field of each
experiment, so every experiment of the layer holds out the same units (the evaluator hashes
``holdout:<layer>``, see :mod:`abtest.client.evaluation`) and no two experiments can disagree.

Changing the share moves units into or out of the holdout, as a weight change moves units
between variants. It is therefore refused (409) while an experiment of the layer has started
and not stopped (running or paused): set it before starting the layer's experiments, or after
stopping them. That keeps each experiment's enrolled population, and the holdout's, one
population over the experiment's whole life.

Holdout exposures (:class:`HoldoutItem`) go through the outcome log's group commit like
ordinary ones and land in ``holdout_exposures``, one row per (experiment, phase, unit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..client.definitions import MAX_HOLDOUT
from ..db import merging_upsert
from ..errors import Conflict, NotFound
from ..models import AuditEntry, Experiment, HoldoutExposure, Layer
from ..validation import Fields
from .experiments import lock_layer, now

__all__ = ["LAYER_FIELDS", "HoldoutItem", "layer_name", "holdout_share", "holdout_shares", "get_layer",
           "list_layers", "set_holdout", "layer_experiments", "holdout_upsert", "aggregate_holdouts"]

LAYER_FIELDS = ("holdout",)
_STARTED = ("running", "paused")


class HoldoutItem(NamedTuple):
    """A holdout exposure to upsert (``count``/``first_seen``: a client's aggregate of several)."""

    experiment_id: int
    phase: int
    unit_id: str
    layer: str
    seen: datetime
    count: int = 1
    first_seen: datetime | None = None


def layer_name(name: Any) -> str:
    """``name`` checked by the rules of an experiment's ``layer`` (422 ``layer`` otherwise)."""
    return str(Fields({"layer": name}, ["layer"]).str("layer", slug=True, max_len=100))


def holdout_share(session: Session, layer: str | None) -> float:
    if layer is None:
        return 0.0
    share = session.scalar(select(Layer.holdout).where(Layer.name == layer))
    return float(share or 0.0)


def holdout_shares(session: Session) -> dict[str, float]:
    return {name: float(share) for name, share in session.execute(select(Layer.name, Layer.holdout))}


def layer_experiments(session: Session, layer: str, *, for_update: bool = False) -> list[Experiment]:
    """The experiments of ``layer``; ``for_update`` locks their rows until the transaction ends
    (a start, which locks its row too, then waits for a holdout change or is seen by it)."""
    stmt = select(Experiment).where(Experiment.layer == layer).order_by(Experiment.id)
    if for_update:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return list(session.scalars(stmt))


def _view(name: str, row: Layer | None, experiments: Iterable[Experiment]) -> dict[str, Any]:
    return {"name": name, "holdout": float(row.holdout) if row is not None else 0.0,
            "experiments": [{"key": e.key, "status": e.status, "layer_range": [e.layer_start, e.layer_end]}
                            for e in experiments],
            "created_at": row.created_at.isoformat() if row is not None else None,
            "updated_at": row.updated_at.isoformat() if row is not None else None}


def get_layer(session: Session, name: str) -> dict[str, Any]:
    """The layer's view; 404 when no experiment names it and it has no settings."""
    name = layer_name(name)
    row, experiments = session.get(Layer, name), layer_experiments(session, name)
    if row is None and not experiments:
        raise NotFound(f"no layer named {name!r}", details={"layer": name})
    return _view(name, row, experiments)


def list_layers(session: Session) -> list[dict[str, Any]]:
    rows = {r.name: r for r in session.scalars(select(Layer))}
    named = set(session.scalars(select(Experiment.layer).where(Experiment.layer.is_not(None)).distinct()))
    return [get_layer(session, name) for name in sorted(set(rows) | named)]


def set_holdout(session: Session, name: str, payload: Any, actor: str) -> dict[str, Any]:
    """``PUT /v1/layers/<name>`` ``{"holdout": share}``: create or change the layer's settings."""
    name = layer_name(name)
    share = float(Fields(payload, LAYER_FIELDS).num("holdout", lo=0.0, hi=MAX_HOLDOUT))
    lock_layer(session, name)  # no experiment places itself in the layer meanwhile
    experiments = layer_experiments(session, name, for_update=True)
    row = session.get(Layer, name)
    before = float(row.holdout) if row is not None else 0.0
    if share != before:
        started = [e.key for e in experiments if e.status in _STARTED]
        if started:
            raise Conflict(f"layer {name!r} has started experiments ({', '.join(started)}): its holdout "
                           "can change only while none of them runs or is paused",
                           details={"field": "holdout", "experiments": started})
    at = now()
    if row is None:
        row = Layer(name=name, holdout=share, created_at=at, updated_at=at)
        session.add(row)
    elif share != before:
        row.holdout, row.updated_at = share, at
    if share != before:
        for e in experiments:  # each experiment's history shows the change of its layer
            session.add(AuditEntry(experiment_id=e.id, at=at, actor=actor, action="layer_holdout",
                                   changes={"layer": name, "holdout": {"from": before, "to": share}}))
    session.flush()
    return _view(name, row, experiments)


def holdout_upsert(dialect: str):  # type: ignore[no-untyped-def]
    """INSERT of holdout exposure rows that merges into existing ones (like exposures)."""
    return merging_upsert(HoldoutExposure, dialect)


def aggregate_holdouts(items: Iterable[HoldoutItem]) -> list[Mapping[str, Any]]:
    """One row per (experiment, phase, unit), in key order (see ``aggregate_exposures``)."""
    merged: dict[tuple[int, int, str], dict[str, Any]] = {}
    for item in items:
        key = (item.experiment_id, item.phase, item.unit_id)
        first = item.first_seen or item.seen
        row = merged.get(key)
        if row is None:
            merged[key] = {"experiment_id": item.experiment_id, "phase": item.phase, "unit_id": item.unit_id,
                           "layer": item.layer, "first_seen": first, "last_seen": item.seen, "count": item.count}
        else:
            row["first_seen"], row["last_seen"] = min(row["first_seen"], first), max(row["last_seen"], item.seen)
            row["count"] += item.count
    return [merged[key] for key in sorted(merged)]
