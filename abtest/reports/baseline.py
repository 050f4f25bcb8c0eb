"""One metric's control baseline and the traffic of a running experiment: what the power planner
(:mod:`abtest.services.planner`) sizes a plan on when asked to plan from history.

The control's statistic is the report's own (:func:`abtest.reports.build.metric_statistics`: the
same rollups and queries, so the planner's baseline is the report's control estimate): its
estimate and per-unit variance (a ratio metric's delta-method variance). A binary event metric
is planned as a rate ``p`` with variance ``p (1 - p)``; every other mean or ratio metric as a
mean with its per-unit variance. Quantile metrics have no per-unit variance to plan on.

Traffic: the units first exposed in the current phase over the last ``traffic_days`` days (or
since the phase's first exposure, when more recent; at least one hour), per day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..errors import ValidationError
from ..models import Exposure
from . import queries as Q
from .build import metric_statistics
from .metrics import Unavailable
from .specs import metric_specs

__all__ = ["MetricBaseline", "metric_baseline"]

_MIN_SPAN = timedelta(hours=1)


@dataclass(frozen=True)
class MetricBaseline:
    """The control's ``mean`` and per-unit ``variance`` of ``metric`` over ``units`` units;
    ``kind`` binary or mean; ``daily_units`` first exposures per day (None before any) at the
    experiment's ``coverage``, measured over ``traffic_days`` days."""

    experiment: str
    metric: str
    phase: int
    control: str
    kind: str
    direction: str
    mean: float
    variance: float
    units: int
    daily_units: float | None
    coverage: float
    traffic_days: float | None


def metric_baseline(session: Session, key: str, metric: str, traffic_days: int = 7,
                    now: datetime | None = None) -> MetricBaseline:
    """The baseline of ``metric`` in experiment ``key``: NotFound for an unknown experiment,
    :class:`ValidationError` (``metric``) for an unknown metric, a quantile or too little data."""
    exp = Q.experiment(session, key)
    spec = next((s for s in metric_specs(exp) if s.name == metric), None)
    if spec is None:
        raise ValidationError("metric", f"experiment {key!r} has no metric {metric!r}")
    if spec.shape == "quantile":
        raise ValidationError("metric", f"{metric!r} is a quantile metric: it has no per-unit variance to plan on")
    control = next(v.key for v in exp.variants if v.is_control)
    stats = metric_statistics(session, exp, spec)[control]
    if isinstance(stats, Unavailable):
        raise ValidationError("metric", f"{metric!r} of the control is unavailable: {stats.reason}")
    if stats.n < 2 or not (math.isfinite(stats.mean) and math.isfinite(stats.variance)):
        raise ValidationError("metric", f"{metric!r} has fewer than 2 control units with data: no history "
                                        "to plan on yet")
    kind, variance = "mean", float(stats.variance)
    if spec.kind == "binary":
        if not 0 < stats.mean < 1:
            raise ValidationError("metric", f"{metric!r} has a control rate of {stats.mean:g}: no variance to "
                                            "plan on")
        kind, variance = "binary", stats.mean * (1.0 - stats.mean)
    rate, span = _daily_units(session, exp.id, exp.phase, traffic_days, now or datetime.now(timezone.utc))
    return MetricBaseline(exp.key, metric, exp.phase, control, kind,
                          "increase" if spec.higher_is_better else "decrease", float(stats.mean), variance,
                          int(stats.n), rate, float(exp.coverage), span)


def _daily_units(session: Session, experiment_id: int, phase: int, traffic_days: int,
                 now: datetime) -> tuple[float | None, float | None]:
    """First exposures per day over the recent window, and the window's length in days."""
    where = (Exposure.experiment_id == experiment_id, Exposure.phase == phase)
    first = session.scalar(select(func.min(Exposure.first_seen)).where(*where))
    if first is None:
        return None, None
    since = max(now - timedelta(days=traffic_days), min(first, now - _MIN_SPAN))
    count = session.scalar(select(func.count()).select_from(Exposure).where(
        *where, Exposure.first_seen >= since, Exposure.first_seen <= now)) or 0
    days = (now - since).total_seconds() / 86_400
    return count / days, days
