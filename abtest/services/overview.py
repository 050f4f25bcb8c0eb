"""Cheap summaries for the web console's lists: units per experiment, the last change of each,
and each engine's recent traffic from the outcome log. A few grouped queries; no analysis here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from ..models import AuditEntry, Experiment, Exposure, RequestLog

__all__ = ["units_by_experiment", "last_changes", "EngineActivity", "engine_activity"]


def units_by_experiment(session: Session) -> dict[int, int]:
    """Experiment id -> units exposed in its current phase (experiments with none are absent)."""
    rows = session.execute(
        select(Exposure.experiment_id, func.count())
        .join(Experiment, and_(Experiment.id == Exposure.experiment_id, Experiment.phase == Exposure.phase))
        .group_by(Exposure.experiment_id)
    ).all()
    return {int(exp_id): int(n) for exp_id, n in rows}


def last_changes(session: Session) -> dict[int, dict[str, Any]]:
    """Experiment id -> its latest audit entry as ``{"at", "actor", "action"}``."""
    latest = select(AuditEntry.experiment_id, func.max(AuditEntry.id).label("id")).group_by(
        AuditEntry.experiment_id).subquery()
    rows = session.execute(
        select(AuditEntry.experiment_id, AuditEntry.at, AuditEntry.actor, AuditEntry.action)
        .join(latest, latest.c.id == AuditEntry.id)
    ).all()
    return {int(r.experiment_id): {"at": r.at.isoformat(), "actor": r.actor, "action": r.action} for r in rows}


@dataclass(frozen=True)
class EngineActivity:
    """One engine's requests in the window: how many, per second, mean and worst latency, errors."""

    engine: str
    requests: int
    per_second: float
    ok: int
    errors: int  # error, timeout and unavailable answers
    rejected: int
    latency_mean_ms: float | None
    latency_max_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def engine_activity(session: Session, window: timedelta = timedelta(hours=1),
                    now: datetime | None = None) -> dict[str, EngineActivity]:
    """Engine name -> its :class:`EngineActivity` over the last ``window`` of the outcome log
    (shadow copies included: they load the engine too). Engines without requests are absent."""
    since = (now or datetime.now(timezone.utc)) - window
    ok = RequestLog.status == "ok"
    rows = session.execute(
        select(
            RequestLog.engine, func.count(),
            func.sum(case((ok, 1), else_=0)),
            func.sum(case((RequestLog.status.in_(("error", "timeout", "unavailable")), 1), else_=0)),
            func.sum(case((RequestLog.status == "rejected", 1), else_=0)),
            func.avg(case((ok, RequestLog.latency_ms))), func.max(case((ok, RequestLog.latency_ms))),
        ).where(RequestLog.finished_at >= since).group_by(RequestLog.engine)
    ).all()
    seconds = window.total_seconds()
    return {
        engine: EngineActivity(engine, int(n), int(n) / seconds, int(n_ok or 0), int(n_err or 0), int(n_rej or 0),
                               None if mean is None else float(mean), None if worst is None else float(worst))
        for engine, n, n_ok, n_err, n_rej, mean, worst in rows
    }
