"""Experiment lifecycle: create, update, start/pause/stop, audit. No HTTP here.

Lifecycle::

    draft ──start──> running <──start── paused
                       │  └──pause──────^  │
                       └──stop──> stopped <┘

Any other transition is a :class:`~abtest.errors.Conflict` (409).

Changing variants (weights, engines, the set of arms) of an experiment that has started opens
a new *phase*: the variant hash is re-salted with the phase number and the analysis covers the
current phase only, so no comparison mixes two allocations. Coverage changes keep the phase:
ramping coverage up only enrolls new units and never moves an enrolled one.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload

from ..errors import Conflict, NotFound, ValidationError
from ..evaluator import ExperimentConfig, VariantConfig
from ..models import AuditEntry, Experiment, Metric, Variant
from ..validation import Fields
from ..validation import experiments as spec
from .schedules import schedule_view, set_schedule

__all__ = [
    "create_experiment",
    "update_experiment",
    "transition",
    "pause_treatment",
    "get_experiment",
    "list_experiments",
    "audit_entries",
    "experiment_view",
    "to_config",
    "TRANSITIONS",
]

TRANSITIONS: dict[str, dict[str, str]] = {
    "start": {"draft": "running", "paused": "running"},
    "pause": {"running": "paused"},
    "stop": {"running": "stopped", "paused": "stopped"},
}


def now() -> datetime:
    return datetime.now(timezone.utc)


def create_experiment(
    session: Session, payload: Any, actor: str, is_engine: Callable[[str], bool]
) -> Experiment:
    f = Fields(payload, spec.CREATE_FIELDS)
    key = f.str("key", slug=True, max_len=100)
    variants = spec.parse_variants(f.list("variants"), is_engine)
    keys = {v["key"] for v in variants}
    exp = Experiment(
        key=key, name=f.str("name", key), hypothesis=f.str("hypothesis", "", max_len=5000, nonempty=False),
        owner=f.str("owner", "", nonempty=False), status="draft",
        coverage=float(f.num("coverage", 1.0, lo=0.0, hi=1.0)), salt=secrets.token_hex(8), phase=1,
        targeting=spec.parse_targeting(f.list("targeting", [])),
        forced=spec.parse_forced(f.obj("forced", {}), keys),
        created_at=now(), updated_at=now(), version=1, treatment_paused=False,
        decision=f.choice("decision", list(spec.DECISIONS), "superiority"),
        quality_sample=_quality_sample(f), sticky=f.bool("sticky", False),
    )
    exp.cuped, exp.cuped_lookback_days = spec.parse_cuped(f._get("cuped", True))
    exp.dimensions = spec.parse_dimensions(f.list("dimensions", []), exp.targeting)
    metrics = spec.parse_metrics(f.list("metrics", []))
    spec.parse_policy(exp.decision, metrics, exp.quality_sample, variants)
    exp.variants = [Variant(position=i, **v) for i, v in enumerate(variants)]
    exp.metrics = [Metric(position=i, **m) for i, m in enumerate(metrics)]
    exp.ramp, exp.ramp_applied = [], 0
    set_schedule(exp, f, now())
    if f.has("layer"):
        _place_in_layer(session, exp, f.str("layer", slug=True, max_len=100),
                        float(f.num("layer_share", 1.0, lo=0.0, hi=1.0)))
    elif f.has("layer_share"):
        raise ValidationError("layer_share", "needs a layer")
    if session.scalar(select(Experiment.id).where(Experiment.key == key)) is not None:
        raise Conflict(f"an experiment with key {key!r} already exists", details={"field": "key"})
    session.add(exp)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create of the same key
        raise Conflict(f"an experiment with key {key!r} already exists", details={"field": "key"}) from exc
    _audit(session, exp, actor, "create", {"experiment": experiment_view(exp)})
    return exp


def _quality_sample(f: Fields) -> float | None:
    """``quality_sample``: a share in (0, 1], or null for no scoring."""
    if not f.has("quality_sample") or f._get("quality_sample", None) is None:
        return None
    share = float(f.num("quality_sample", lo=0.0, hi=1.0))
    if share <= 0.0:
        raise ValidationError("quality_sample", "must be in (0, 1]: the share of requests to score "
                              "(null or absent: none)")
    return share


def _place_in_layer(session: Session, exp: Experiment, layer: str, share: float) -> None:
    """Give ``exp`` the first free range of ``share`` in ``layer`` (mutual exclusion).

    Reading the taken ranges and inserting the new one must be atomic, or two concurrent
    creates both see the same free range: :func:`_lock_layer` serializes placements in one
    layer until the caller's transaction ends.
    """
    _lock_layer(session, layer)
    taken = session.execute(
        select(Experiment.layer_start, Experiment.layer_end)
        .where(Experiment.layer == layer, Experiment.status != "stopped")
        .order_by(Experiment.layer_start)
    ).all()
    start = 0.0
    for lo, hi in taken:
        if lo - start >= share - 1e-12:
            break
        start = max(start, hi)
    if start + share > 1.0 + 1e-12:
        raise Conflict(f"layer {layer!r} has no free range of {share:g}", details={"field": "layer_share"})
    exp.layer, exp.layer_start, exp.layer_end = layer, start, min(1.0, start + share)


def layer_lock_key(layer: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock`` (the same in every process)."""
    digest = hashlib.blake2b(f"abtest.layer:{layer}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lock_layer(session: Session, layer: str) -> None:
    """Hold the placement lock of ``layer`` until this transaction commits or rolls back.

    PostgreSQL: a transaction-scoped advisory lock keyed by the layer name; under READ
    COMMITTED (the default) the reads after it see every placement committed before it.
    SQLite: an empty write takes the database's single write lock now (a no-op UPDATE opens a
    write transaction even though it changes no row), so the reads that follow see the latest
    commit and no other writer can commit in between; waiting for the lock is bounded by the
    connection's busy timeout. Should the transaction already hold an older read snapshot,
    SQLite refuses the write at once (SQLITE_BUSY_SNAPSHOT): that, or a lock wait that timed
    out, is a 409 the client can retry, never an overlap. So is a PostgreSQL lock wait cut short
    by ``lock_timeout`` or ``statement_timeout``.
    """
    dialect = session.get_bind().dialect.name
    try:
        if dialect == "postgresql":
            session.execute(select(func.pg_advisory_xact_lock(layer_lock_key(layer))))
        elif dialect == "sqlite":
            session.execute(text("UPDATE experiments SET layer = layer WHERE 1 = 0"))
    except OperationalError as exc:
        if not _lock_wait_failed(exc):
            raise
        raise Conflict(f"layer {layer!r} is being changed by a concurrent request; retry",
                       details={"field": "layer"}) from exc


def _lock_wait_failed(exc: OperationalError) -> bool:
    """SQLite busy or locked (incl. SQLITE_BUSY_SNAPSHOT); PostgreSQL lock or statement timeout."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate in ("55P03", "57014")  # lock_not_available, query_canceled
    message = str(exc.orig).lower()
    return "locked" in message or "busy" in message


def update_experiment(
    session: Session, exp: Experiment, payload: Any, actor: str, is_engine: Callable[[str], bool]
) -> Experiment:
    if exp.status == "stopped":
        raise Conflict(f"experiment {exp.key!r} is stopped and can no longer change")
    for name in spec.IMMUTABLE_FIELDS if isinstance(payload, Mapping) else ():
        if name in payload:  # set once, at creation: say so rather than "unknown field"
            raise ValidationError(name, "cannot be changed after creation")
    f = Fields(payload, spec.MUTABLE_FIELDS)
    before = experiment_view(exp)
    for name in ("name", "owner"):
        if f.has(name):
            setattr(exp, name, f.str(name, nonempty=name == "name"))
    if f.has("hypothesis"):
        exp.hypothesis = f.str("hypothesis", max_len=5000, nonempty=False)
    if f.has("coverage"):
        exp.coverage = float(f.num("coverage", lo=0.0, hi=1.0))
    if f.has("targeting"):
        exp.targeting = spec.parse_targeting(f.list("targeting"))
    if f.has("treatment_paused"):  # e.g. resume the treatment after a guardrail breach was understood
        exp.treatment_paused = f.bool("treatment_paused")
    if f.has("variants"):
        _replace_variants(session, exp, spec.parse_variants(f.list("variants"), is_engine))
    if f.has("forced") or f.has("variants"):
        raw = f.obj("forced") if f.has("forced") else exp.forced
        exp.forced = spec.parse_forced(raw, {v.key for v in exp.variants})
    if f.has("decision"):
        exp.decision = f.choice("decision", list(spec.DECISIONS))
    if f.has("quality_sample"):
        exp.quality_sample = _quality_sample(f)
    if f.has("cuped"):
        exp.cuped, exp.cuped_lookback_days = spec.parse_cuped(f._get("cuped", True))
    if f.has("dimensions") or f.has("targeting"):
        exp.dimensions = spec.parse_dimensions(f.list("dimensions") if f.has("dimensions") else exp.dimensions or [],
                                               exp.targeting)
    if f.has("sticky"):
        exp.sticky = f.bool("sticky")
    if f.has("ramp") or f.has("start_at") or f.has("stop_at"):
        set_schedule(exp, f, now())
    metrics = spec.parse_metrics(f.list("metrics")) if f.has("metrics") else [
        {c: getattr(m, c) for c in ("name", "event_name", "kind", "role", "direction", "margin", "test")}
        for m in exp.metrics]
    spec.parse_policy(exp.decision, metrics, exp.quality_sample,
                      [{"shadow": v.shadow, "quality_reference": v.quality_reference} for v in exp.variants])
    if f.has("metrics"):
        exp.metrics.clear()
        session.flush()
        exp.metrics.extend(Metric(position=i, **m) for i, m in enumerate(metrics))
    exp.updated_at, exp.version = now(), exp.version + 1
    session.flush()
    after = experiment_view(exp)
    changes = {k: {"from": before[k], "to": after[k]} for k in after if before.get(k) != after[k]}
    _audit(session, exp, actor, "update", changes)
    return exp


def _replace_variants(session: Session, exp: Experiment, variants: list[dict[str, Any]]) -> None:
    old = [(v.key, v.engine, v.weight, v.is_control, v.shadow) for v in exp.variants]
    new = [(v["key"], v["engine"], v["weight"], v["is_control"], v["shadow"]) for v in variants]
    if old == new:  # the allocation is the same: a quality reference changes in place, same phase
        for row, v in zip(exp.variants, variants):
            row.quality_reference, row.quality_min_agreement = v["quality_reference"], v["quality_min_agreement"]
        return
    exp.variants.clear()
    session.flush()
    exp.variants.extend(Variant(position=i, **v) for i, v in enumerate(variants))
    if exp.started_at is not None:
        exp.phase += 1  # a new allocation: re-randomize and analyse separately


def transition(session: Session, exp: Experiment, action: str, actor: str,
               details: Mapping[str, Any] | None = None, at: datetime | None = None) -> Experiment:
    """Move ``exp`` along :data:`TRANSITIONS` at ``at`` (default: now), with one audit entry
    ``action`` (plus ``details``).

    A start clears a pending ``start_at`` and a stop a pending ``stop_at``; a start is refused
    while ``stop_at`` has passed (the monitor would stop the experiment at once)."""
    target = TRANSITIONS[action].get(exp.status)
    if target is None:
        raise Conflict(
            f"cannot {action} an experiment that is {exp.status}",
            details={"status": exp.status, "action": action},
        )
    at = at or now()
    if target == "running" and exp.stop_at is not None and exp.stop_at <= at:
        raise Conflict(f"cannot start {exp.key!r}: its stop_at ({exp.stop_at.isoformat()}) has passed; "
                       "change or clear stop_at first", details={"field": "stop_at", "action": action})
    before = exp.status
    exp.status, exp.updated_at, exp.version = target, at, exp.version + 1
    changes: dict[str, Any] = {"status": {"from": before, "to": target}, **(details or {})}
    if target == "running" and exp.started_at is None:
        exp.started_at = at
    if target == "running" and exp.start_at is not None:
        changes["start_at"] = {"from": exp.start_at.isoformat(), "to": None}
        exp.start_at = None
    if target == "stopped":
        exp.stopped_at = at
        if exp.stop_at is not None:
            changes["stop_at"] = {"from": exp.stop_at.isoformat(), "to": None}
            exp.stop_at = None
    session.flush()
    session.add(AuditEntry(experiment_id=exp.id, at=at, actor=actor, action=action, changes=changes))
    return exp


def pause_treatment(session: Session, exp: Experiment, actor: str, reason: str, *,
                    action: str = "pause_treatment", details: Mapping[str, Any] | None = None) -> bool:
    """Pause a running experiment's treatment (assignment then sends its traffic to control):
    flag, version and ``updated_at`` bump and one audit entry ``action`` carrying ``reason`` and
    ``details``, in the caller's transaction (lock the row first: ``get_experiment(for_update=True)``).
    False, changing nothing, when it is already paused or not running."""
    if exp.treatment_paused or exp.status != "running":
        return False
    at = now()
    exp.treatment_paused, exp.updated_at, exp.version = True, at, exp.version + 1
    session.add(AuditEntry(experiment_id=exp.id, at=at, actor=actor, action=action, changes={
        "reason": reason, **(details or {}), "treatment_paused": {"from": False, "to": True}}))
    return True


def get_experiment(session: Session, key: str, *, for_update: bool = False) -> Experiment:
    stmt = select(Experiment).where(Experiment.key == key).options(
        selectinload(Experiment.variants), selectinload(Experiment.metrics)
    )
    if for_update:
        stmt = stmt.with_for_update()
    exp = session.scalar(stmt)
    if exp is None:
        raise NotFound(f"no experiment with key {key!r}", details={"experiment": key})
    return exp


def list_experiments(session: Session, status: str | None = None) -> list[Experiment]:
    stmt = select(Experiment).options(selectinload(Experiment.variants), selectinload(Experiment.metrics))
    if status is not None:
        stmt = stmt.where(Experiment.status == status)
    return list(session.scalars(stmt.order_by(Experiment.id)))


def audit_entries(session: Session, exp: Experiment) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(AuditEntry).where(AuditEntry.experiment_id == exp.id).order_by(AuditEntry.id)
    )
    return [{"id": r.id, "at": r.at.isoformat(), "actor": r.actor, "action": r.action,
             "changes": r.changes} for r in rows]


def _audit(session: Session, exp: Experiment, actor: str, action: str, changes: Mapping[str, Any]) -> None:
    session.add(AuditEntry(experiment_id=exp.id, at=now(), actor=actor, action=action, changes=dict(changes)))


def experiment_view(exp: Experiment) -> dict[str, Any]:
    """The API's JSON form of an experiment."""
    return {
        "key": exp.key, "name": exp.name, "hypothesis": exp.hypothesis, "owner": exp.owner,
        "status": exp.status, "coverage": exp.coverage, "phase": exp.phase,
        "decision": exp.decision, "quality_sample": exp.quality_sample, "sticky": exp.sticky,
        "cuped": {"enabled": bool(exp.cuped is not False),
                  "lookback_days": exp.cuped_lookback_days or spec.DEFAULT_LOOKBACK_DAYS},
        "dimensions": list(exp.dimensions or []),
        "variants": [{"key": v.key, "engine": v.engine, "weight": v.weight,
                      "control": v.is_control, "shadow": v.shadow,
                      **({"quality_reference": v.quality_reference} if v.quality_reference else {}),
                      **({"quality_min_agreement": v.quality_min_agreement}
                         if v.quality_min_agreement is not None else {})}
                     for v in exp.variants],
        "targeting": exp.targeting, "forced": exp.forced,
        "layer": exp.layer, "layer_range": [exp.layer_start, exp.layer_end] if exp.layer else None,
        "metrics": [spec.metric_view(vars(m)) for m in exp.metrics],
        "treatment_paused": exp.treatment_paused, "version": exp.version,
        "created_at": _iso(exp.created_at), "updated_at": _iso(exp.updated_at),
        "started_at": _iso(exp.started_at), "stopped_at": _iso(exp.stopped_at),
        **schedule_view(exp),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def to_config(exp: Experiment, holdout: float = 0.0) -> ExperimentConfig:
    """The evaluator's snapshot of ``exp``; ``holdout``: its layer's holdout share."""
    return ExperimentConfig(
        id=exp.id, key=exp.key, status=exp.status, salt=exp.salt, phase=exp.phase,
        coverage=exp.coverage,
        variants=tuple(VariantConfig(v.key, v.engine, v.weight, v.is_control, v.shadow, v.quality_reference)
                       for v in exp.variants),
        targeting=tuple(exp.targeting or ()), forced=dict(exp.forced or {}),
        layer=exp.layer, layer_start=exp.layer_start, layer_end=exp.layer_end,
        treatment_paused=exp.treatment_paused, quality_sample=exp.quality_sample,
        dimensions=tuple(exp.dimensions or ()), sticky=bool(exp.sticky),
        holdout=holdout if exp.layer is not None else 0.0,
    )


def resume_treatment(session: Session, exp: Experiment, actor: str, reason: str | None = None) -> bool:
    """Send traffic to the treatment again after a pause (a guardrail breach that was understood):
    ``treatment_paused`` back to false, version and ``updated_at`` bump and one audit entry
    ``resume_treatment`` carrying ``reason``, in the caller's transaction (lock the row first:
    ``get_experiment(for_update=True)``). False, changing nothing, when the treatment is not
    paused; a stopped experiment is a :class:`~abtest.errors.Conflict`, as for any update."""
    if exp.status == "stopped":
        raise Conflict(f"experiment {exp.key!r} is stopped and can no longer change")
    if not exp.treatment_paused:
        return False
    at = now()
    exp.treatment_paused, exp.updated_at, exp.version = False, at, exp.version + 1
    session.add(AuditEntry(experiment_id=exp.id, at=at, actor=actor, action="resume_treatment", changes={
        **({"reason": reason} if reason else {}), "treatment_paused": {"from": True, "to": False}}))
    return True


lock_layer = _lock_layer  # for the layer settings (abtest.services.layers)


def rehearse_update(session: Session, key: str, payload: Any, actor: str,
                    is_engine: Callable[[str], bool]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(before, after): the experiment's views around ``update_experiment(payload)``, then rolled
    back, so nothing is written. Raises what the update would (ValidationError, Conflict, NotFound).
    ``session`` is a plain session (``Database.session()``), not a transaction's: this rolls it back."""
    try:
        exp = get_experiment(session, key)
        before = experiment_view(exp)
        update_experiment(session, exp, payload, actor, is_engine)
        return before, experiment_view(exp)
    finally:
        session.rollback()


def opens_new_phase(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Does the change from view ``before`` to view ``after`` re-randomize every unit (a new phase)?"""
    return int(after["phase"]) > int(before["phase"])


__all__ += ["resume_treatment", "lock_layer", "rehearse_update", "opens_new_phase"]
