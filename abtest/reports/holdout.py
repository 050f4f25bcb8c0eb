"""The cumulative impact report of a layer: its holdout against the units its experiments enrolled.

Populations (every experiment of the layer, every phase):

* **holdout**: units with a holdout exposure in the layer (an experiment would have enrolled
  them, but the layer's holdout kept them on the control);
* **exposed**: units with an ordinary exposure in any experiment of the layer, whatever
  variant they got (control included: the comparison is "the layer's experiments as they
  ran" against "none of them");
* a unit found in both (the share changed between experiments) counts in neither; it is
  reported as ``units.both``.

The holdout hash is independent of the layer positions, coverage and variant hashes, so both
populations are random parts of the same population (the units the layer's experiments would
enrol); the check ``holdout_split`` tests their sizes against the share (chi-square,
:func:`abtest.stats.srm_test`).

Metrics: the event metrics every experiment of the layer shares (same name, event, kind and
attribution window), per unit from its first exposure in the layer: ``binary`` 1 when it has
an event of the metric's name within the window, ``count`` the number of such events, ``sum``
their values (an event that names an experiment outside the layer is ignored); and the
built-in ``error_rate`` (errors over requests, rejected and unavailable excluded) and
``latency_ms`` (mean latency of ok requests) of the units' non-shadow requests to the layer's
experiments, as per-unit ratios. Each is compared by :func:`abtest.stats.welch_test` (exposed
minus holdout, and the relative lift exposed / holdout - 1 by the delta method), with no
adjustment for multiple comparisons.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from .. import stats as S
from ..models import Event, Experiment, Exposure, HoldoutExposure, Metric, RequestLog
from .statuses import ERRORS, EXCLUDED, OK

__all__ = ["LayerMetric", "build_layer_report"]

_EVENT_KINDS = ("binary", "count", "sum")
_BUILTINS = (("error_rate", "decrease"), ("latency_ms", "decrease"))


@dataclass(frozen=True)
class LayerMetric:
    name: str
    kind: str  # binary | count | sum | builtin
    direction: str  # increase | decrease
    event: str | None = None
    window_s: int = 0


def shared_metrics(experiments: list[Experiment]) -> list[LayerMetric]:
    """Event metrics defined alike in every experiment of the layer (in the first one's order)."""
    if not experiments:
        return []

    def keyed(exp: Experiment) -> dict[tuple[Any, ...], Metric]:
        return {(m.name, m.event_name, m.kind, m.attribution_window_s): m for m in exp.metrics
                if m.kind in _EVENT_KINDS}

    first, common = keyed(experiments[0]), None
    for exp in experiments:
        keys = set(keyed(exp))
        common = keys if common is None else common & keys
    return [LayerMetric(m.name, m.kind, m.direction, m.event_name, m.attribution_window_s)
            for key, m in first.items() if key in (common or set())]


def _first_seen(session: Session, table: Any, ids: list[int]) -> dict[str, datetime]:
    rows = session.execute(select(table.unit_id, func.min(table.first_seen))
                           .where(table.experiment_id.in_(ids)).group_by(table.unit_id))
    return {unit: first for unit, first in rows}


def _event_values(session: Session, metric: LayerMetric, first: dict[str, datetime],
                  keys: set[str], units: Any) -> dict[str, float]:
    """Per unit of ``first``: the metric's value from its events in [first seen, + window]."""
    values: dict[str, float] = defaultdict(float)
    hit: set[str] = set()
    window = timedelta(seconds=metric.window_s)
    rows = session.execute(select(Event.unit_id, Event.timestamp, Event.value, Event.experiment_key)
                           .where(Event.name == metric.event, Event.unit_id.in_(units)))
    for unit, at, value, key in rows:
        start = first.get(unit)
        if start is None or (key is not None and key not in keys) or not start <= at <= start + window:
            continue
        if metric.kind == "binary":
            hit.add(unit)
        else:
            values[unit] += 1.0 if metric.kind == "count" else float(value)
    if metric.kind == "binary":
        return {u: 1.0 for u in hit}
    return dict(values)


def _request_sums(session: Session, ids: list[int]) -> dict[tuple[str, bool], tuple[int, int, int, float]]:
    """(unit, enrolled) -> (requests in the error rate's denominator, errors, ok, ok latency sum)."""
    r = RequestLog
    denominator = func.sum(case((r.status.not_in(EXCLUDED), 1), else_=0))
    errors = func.sum(case((r.status.in_(ERRORS), 1), else_=0))
    ok = func.sum(case((r.status == OK, 1), else_=0))
    latency = func.sum(case((r.status == OK, r.latency_ms), else_=0.0))
    rows = session.execute(select(r.unit_id, r.in_experiment, denominator, errors, ok, latency)
                           .where(r.experiment_id.in_(ids), r.shadow.is_(False))
                           .group_by(r.unit_id, r.in_experiment))
    return {(u, bool(enrolled)): (int(d or 0), int(e or 0), int(k or 0), float(lat or 0.0))
            for u, enrolled, d, e, k, lat in rows}


def _effect(effect: Any) -> dict[str, Any] | None:
    if effect is None:
        return None
    return {"estimate": effect.estimate, "se": effect.se, "ci_lower": effect.ci_lower,
            "ci_upper": effect.ci_upper, "p_value": effect.p_value}


def _comparison(metric: LayerMetric, holdout: Any, exposed: Any, alpha: float) -> dict[str, Any]:
    c = S.welch_test(holdout, exposed, alpha)
    return {"name": metric.name, "kind": metric.kind, "event": metric.event, "direction": metric.direction,
            "holdout": {"units": c.n_control, "mean": c.control_mean},
            "exposed": {"units": c.n_treatment, "mean": c.treatment_mean},
            "difference": _effect(c.absolute), "relative_lift": _effect(c.relative),
            "error": c.error, "relative_error": c.relative_error}


def _means(values: dict[str, float], units: set[str]) -> S.MeanStats:
    return S.MeanStats.from_values([values.get(u, 0.0) for u in sorted(units)])


def _ratios(sums: dict[tuple[str, bool], tuple[int, int, int, float]], units: set[str], enrolled: bool,
            metric: str) -> S.RatioStats:
    num, den = [], []
    for u in sorted(units):
        d, e, k, lat = sums.get((u, enrolled), (0, 0, 0, 0.0))
        n, m = (d, e) if metric == "error_rate" else (k, lat)
        if n > 0:  # units without such requests carry no ratio (as in the experiment report)
            num.append(m)
            den.append(n)
    return S.RatioStats.from_values(num, den)


def build_layer_report(session: Session, layer: Mapping[str, Any], alpha: float = 0.05) -> dict[str, Any]:
    """The cumulative impact report (see the module doc) of ``layer``, the layer's view as
    :func:`abtest.services.layers.get_layer` returns it (``name`` and ``holdout``)."""
    experiments = list(session.scalars(select(Experiment).where(
        Experiment.layer == layer["name"], Experiment.started_at.is_not(None)).order_by(Experiment.id)))
    ids = [e.id for e in experiments]
    exposed_first = _first_seen(session, Exposure, ids) if ids else {}
    holdout_first = _first_seen(session, HoldoutExposure, ids) if ids else {}
    both = set(exposed_first) & set(holdout_first)
    exposed, holdout = set(exposed_first) - both, set(holdout_first) - both
    first = {**{u: exposed_first[u] for u in exposed}, **{u: holdout_first[u] for u in holdout}}
    share = layer["holdout"]
    split = None
    if share > 0.0:
        srm = S.srm_test([len(holdout), len(exposed)], [share, 1.0 - share])
        split = {"expected_share": share, "observed": [len(holdout), len(exposed)], "p_value": srm.p_value,
                 "flagged": srm.flagged, "message": srm.message}
    metrics = []
    keys = {e.key for e in experiments}
    units = (select(Exposure.unit_id).where(Exposure.experiment_id.in_(ids))
             .union(select(HoldoutExposure.unit_id).where(HoldoutExposure.experiment_id.in_(ids))))
    for metric in shared_metrics(experiments):
        values = _event_values(session, metric, first, keys, units)
        metrics.append(_comparison(metric, _means(values, holdout), _means(values, exposed), alpha))
    sums = _request_sums(session, ids) if ids else {}
    for builtin, direction in _BUILTINS:
        metric = LayerMetric(builtin, "builtin", direction)
        metrics.append(_comparison(metric, _ratios(sums, holdout, False, builtin),
                                   _ratios(sums, exposed, True, builtin), alpha))
    return {"layer": layer["name"], "holdout": share, "alpha": alpha,
            "experiments": [{"key": e.key, "status": e.status} for e in experiments],
            "units": {"holdout": len(holdout), "exposed": len(exposed), "both": len(both)},
            "holdout_split": split, "metrics": metrics,
            "method": "exposed (any variant of any experiment of the layer) minus holdout (control everywhere); "
                      "Welch's t-test per unit, delta-method relative lift; no multiple-testing adjustment"}
