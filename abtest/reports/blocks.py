"""The descriptive parts of a report: experiment, SRM, variants, histogram, shadow, time series."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import stats as S
from .metrics import MetricSpec, by_day
from .model import (
    Breach,
    ExperimentInfo,
    Histogram,
    ShadowSummary,
    SRMBlock,
    SRMVariant,
    TimePoint,
    TimeSeries,
    VariantSummary,
    clean,
)

__all__ = ["experiment_info", "srm_result", "srm_block", "variant_summaries", "histogram", "shadow_summaries",
           "timeseries"]


def experiment_info(exp: Any, breach: Any | None) -> ExperimentInfo:
    """``exp`` an Experiment row, ``breach`` its last guardrail-breach AuditEntry (or None)."""
    iso = (lambda d: d.isoformat() if d else None)
    return ExperimentInfo(
        exp.key, exp.name, exp.hypothesis, exp.owner, exp.status, exp.phase, exp.treatment_paused,
        iso(exp.created_at), iso(exp.started_at), iso(exp.stopped_at), iso(exp.updated_at),
        None if breach is None else Breach(breach.at.isoformat(), breach.actor, dict(breach.changes)))


def srm_result(keys: Sequence[str], arms: Sequence[Any], exposed: Mapping[str, int]) -> S.SRMResult:
    """Pearson chi-square of exposed units; a dark launch (one served arm) has nothing to check."""
    counts = [exposed.get(k, 0) for k in keys]
    if len(arms) < 2:
        return S.SRMResult(tuple(counts), tuple(float(c) for c in counts), 0.0, 0, 1.0,
                           S.DEFAULT_SRM_THRESHOLD, False, "one served variant; sample ratio not checked")
    return S.srm_test(counts, [max(v.weight, 1e-12) for v in arms])


def srm_block(srm: S.SRMResult, keys: Sequence[str], exposed: Mapping[str, int], arms: Sequence[Any]) -> SRMBlock:
    total_w = sum(v.weight for v in arms) or 1.0
    return SRMBlock(srm.flagged, clean(srm.p_value), clean(srm.chi2), srm.threshold, srm.message, tuple(
        SRMVariant(k, exposed.get(k, 0), v.weight / total_w, clean(e)) for k, v, e in zip(keys, arms, srm.expected)))


def variant_summaries(arms: Sequence[Any], exposed: Mapping[str, int],
                      requests: Mapping[str, Mapping[str, int]]) -> tuple[VariantSummary, ...]:
    empty = {"units_with_requests": 0, "requests": 0, "rejected": 0, "unavailable": 0}
    return tuple(VariantSummary(v.key, v.engine, v.is_control, v.weight, exposed.get(v.key, 0),
                                **requests.get(v.key, empty)) for v in arms)


def histogram(sketches: Mapping[str, S.LatencySketch]) -> Histogram | None:
    """Latency distribution per variant over [0, 1.05 x the largest variant p99), for the page."""
    p99s = [sk.quantile(0.99) for sk in sketches.values() if sk.count]
    if not p99s or max(p99s) <= 0:
        return None
    upper = max(p99s) * 1.05
    bins = 40
    counts = {v: tuple(sk.histogram(upper, bins)) for v, sk in sketches.items() if sk.count}
    return Histogram(upper / bins, upper, counts, "last bin: requests at or above upper_ms")


def shadow_summaries(rows: Sequence[Mapping[str, Any]]) -> tuple[ShadowSummary, ...]:
    return tuple(ShadowSummary(**{k: clean(v) for k, v in row.items()}) for row in rows)


def timeseries(spec: MetricSpec | None, source: Mapping[str, Mapping[str, Any]], control: str,
               treatments: Sequence[str], alpha: float, n_star: float) -> TimeSeries | None:
    """Cumulative relative effect by day (units by first activity) with the sequential bounds;
    ``source`` holds the spec's statistics per variant and day."""
    if spec is None or not treatments:
        return None
    days = sorted({d for per in source.values() for d in per})
    ratio = spec.shape == "ratio"
    series = {}
    for t in treatments:
        points = []
        for day, c, tr in zip(days, by_day(source.get(control), days, ratio), by_day(source.get(t), days, ratio)):
            comp = S.welch_test(c, tr, alpha)
            seq = S.sequential_test(comp, n_star)
            rel, srel = comp.relative, seq.relative
            points.append(TimePoint(day, comp.n_total, clean(rel.estimate) if rel else None,
                                    clean(rel.ci_lower) if rel else None, clean(rel.ci_upper) if rel else None,
                                    clean(srel.ci_lower) if srel else None, clean(srel.ci_upper) if srel else None))
        series[t] = tuple(points)
    return TimeSeries(spec.name, "relative", "day of first activity (cumulative)", series)
