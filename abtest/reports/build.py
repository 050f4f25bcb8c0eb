"""The experiment report: a :class:`~abtest.reports.model.Report` (its ``to_json()`` is the JSON body of
``GET /v1/experiments/<key>/report``).

``build_report(session, key, options)`` runs the queries of :mod:`abtest.reports.queries`
(sufficient statistics only) and feeds :mod:`abtest.stats`. Definitions the report commits to:

* Metrics: the built-ins of :mod:`abtest.reports.catalogue`: ``latency_ms`` (mean of ok requests, ratio metric), ``latency_p50_ms``,
  ``latency_p95_ms``, ``latency_p99_ms`` (cluster-aware quantiles), ``error_rate`` (ratio), then
  the experiment's event metrics in their configured order.
* ``p_value`` is the fixed-horizon Welch (or quantile normal) test of the absolute difference;
  ``adjusted_p_value`` is Holm-Bonferroni over every metric x treatment comparison of the
  report (family-wise error control); ``significant`` means ``adjusted_p_value < alpha``.
  ``sequential`` holds the always-valid CI / p-value (confidence sequence, tuning ``n_star``),
  valid however often the report is looked at.
* The recommendation (per treatment, see :mod:`abtest.stats.decision`) uses the *sequential*
  CIs: absolute for the primary metric and for guardrails without a margin (margin 0 = any
  confident harm breaches), relative for guardrails with a relative ``margin``; the SRM check
  (p < 0.001 blocks "ship") and the primary metric's power for ``mde`` (relative).
* ``cap`` (optional, e.g. 0.99) winsorizes request latency at the pooled quantile of that level
  (read from the merged latency sketches) before ``latency_ms`` is computed (quantile metrics are
  unaffected by capping at their level).
* Quantiles come from the latency sketch (0.1 % relative accuracy); the unit-level step of
  their CIs is exact up to ``exact_quantile_rows`` ok requests and uses the 1-in-32 unit
  sample above that, when the sample holds at least ``min_sample_units`` units per variant
  (``options.quantiles`` in the report says which was used).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.orm import Session

from .. import stats as S
from . import blocks as B
from . import queries as Q
from .metrics import (
    QUANTILE_LEVELS,
    MetricSpec,
    comparison_view,
    estimate_view,
    indicator_stats,
    mean_stats,
    quantile_estimates,
    ratio_stats,
    total,
)
from .catalogue import ratio_metrics
from .model import (
    GuardrailResult,
    MetricResult,
    MultipleTesting,
    Options,
    OverallRecommendation,
    PowerPlan,
    QuantileMethod,
    Report,
    TimeSeries,
    TreatmentRecommendation,
    clean,
)
from .quality import quality_section
from .specs import metric_specs

__all__ = ["ReportOptions", "Report", "build_report", "metric_specs"]

BREACH_ACTION = "guardrail_breach"
_BASIS = "sequential (always-valid) CIs: absolute; relative for guardrails with a margin"


@dataclass(frozen=True)
class ReportOptions:
    """Knobs of a report. ``metrics`` restricts the analysis to those names (guardrail checks);
    ``histogram`` adds the latency distribution per variant (the HTML page's)."""

    alpha: float = 0.05
    cap: float | None = None
    mde: float = 0.05
    n_star: float = S.DEFAULT_N_STAR
    histogram: bool = False
    exact_quantile_rows: int = 1_000_000
    min_sample_units: int = 1000
    metrics: tuple[str, ...] | None = None
    now: datetime | None = field(default=None, compare=False)


@dataclass
class _Data:
    """What the queries gave: statistics per metric, variant and day (ratio and mean metrics),
    quantile estimates per metric and variant, and the descriptive extras."""

    daily: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    quantiles: dict[str, dict[str, S.QuantileEstimate]] = field(default_factory=dict)
    quantile_method: QuantileMethod | None = None
    cap_value: float | None = None
    requests_by_variant: dict[str, dict[str, int]] = field(default_factory=dict)
    histogram: Any = None
    shadow: tuple[Any, ...] = ()

    def stats_of(self, spec: MetricSpec, variant: str) -> Any:
        if spec.shape == "quantile":
            return self.quantiles[spec.name][variant]
        return total(self.daily[spec.name].get(variant), spec.shape == "ratio")


def build_report(session: Session, key: str, options: ReportOptions = ReportOptions()) -> Report:
    """The whole report; raises NotFound for an unknown experiment key."""
    exp = Q.experiment(session, key)
    conn = session.connection()
    scope = Q.Scope(exp.id, exp.phase, conn.dialect.name)
    now = options.now or datetime.now(timezone.utc)
    arms = [v for v in exp.variants if not v.shadow]
    control = next(v.key for v in arms if v.is_control)
    treatments = [v.key for v in arms if not v.is_control]
    keys = [control, *treatments]
    specs = [s for s in metric_specs(exp) if options.metrics is None or s.name in options.metrics]

    exposed_days = Q.exposure_days(conn, scope)
    exposed: dict[str, int] = {}
    for cell in exposed_days:
        exposed[cell["variant"]] = exposed.get(cell["variant"], 0) + int(cell["units"])
    srm = B.srm_result(keys, arms, exposed)
    data = _collect(conn, scope, exp.key, specs, keys, options, exposed_days)

    analyses = {(s.name, t): _analyze(s, data, control, t, options) for s in specs for t in treatments}
    adjusted, family = _holm(analyses, options.alpha)
    metrics = tuple(_metric(s, data, keys, treatments, analyses, adjusted, options) for s in specs)
    days_elapsed = _days(exp.started_at, now)
    recs = [_recommend(t, specs, data, analyses, srm, control, days_elapsed, options) for t in treatments]
    top = S.headline([(t, rec) for t, (rec, _) in zip(treatments, recs)])
    return Report(
        experiment=B.experiment_info(exp, Q.last_audit_entry(session, exp.id, BREACH_ACTION)),
        generated_at=now.isoformat(),
        options=Options(options.alpha, options.cap, data.cap_value, data.quantile_method, options.mde,
                        options.n_star, MultipleTesting("holm", family), _BASIS),
        srm=B.srm_block(srm, keys, exposed, arms),
        variants=B.variant_summaries(arms, exposed, data.requests_by_variant),
        metrics=metrics,
        recommendation=OverallRecommendation(top.action, top.variant, top.reasons),
        recommendations=tuple(view for _, view in recs),
        timeseries=_timeseries(specs, data, control, treatments, options) if options.metrics is None else None,
        latency_histogram=data.histogram,
        shadow=data.shadow,
        quality=quality_section(conn, scope, exp) if options.metrics is None else None,
    )


# --- data collection ---------------------------------------------------------------------

def _collect(conn: Any, scope: Q.Scope, key: str, specs: Sequence[MetricSpec], keys: Sequence[str],
             options: ReportOptions, exposed_days: Sequence[Mapping[str, Any]]) -> _Data:
    """Run each query once: the unit rollup (or the capped log scan), the sketches and the
    quantile CIs, event sums per metric, then the histogram and shadow extras."""
    Q.tune_session(conn)
    data = _Data()
    shapes = {s.shape for s in specs}
    sketches = Q.sketches(conn, scope) if "quantile" in shapes or options.cap or options.histogram else {}
    if shapes & {"ratio", "quantile"}:
        pooled = sum(sketches.values(), S.LatencySketch())
        data.cap_value = pooled.quantile(options.cap) if options.cap and pooled.count else None
        rows = (Q.request_rows(conn, scope, data.cap_value) if data.cap_value is not None
                else Q.unit_rows(conn, scope))
        data.daily.update({m.name: ratio_stats(rows, m.name) for m in ratio_metrics()})
        data.requests_by_variant = _request_counts(rows)
        if "quantile" in shapes:
            data.quantiles, data.quantile_method = _quantiles(conn, scope, keys, sketches, rows, options)
    events: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    for s in specs:
        if s.shape == "mean":
            source = (s.event_name or s.name, s.window_s)
            if source not in events:
                events[source] = Q.event_rows(conn, scope, key, *source, exposed_days)
            data.daily[s.name] = mean_stats(events[source][s.kind])
    if options.histogram and options.metrics is None:
        data.histogram = B.histogram(sketches)
    if options.metrics is None:
        data.shadow = B.shadow_summaries(Q.shadow_rows(conn, scope))
    return data


def _request_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        c = out.setdefault(r["variant"], {"units_with_requests": 0, "requests": 0, "rejected": 0,
                                          "unavailable": 0})
        c["units_with_requests"] += int(r["units"])
        c["requests"] += int(r["n_all"])
        c["rejected"] += int(r["n_rej"])
        c["unavailable"] += int(r["n_unav"])
    return out


def _quantiles(conn: Any, scope: Q.Scope, keys: Sequence[str], sketches: Mapping[str, S.LatencySketch],
               rows: Sequence[Mapping[str, Any]],
               options: ReportOptions) -> tuple[dict[str, dict[str, S.QuantileEstimate]], QuantileMethod]:
    """Quantile steps 1-4: estimates from the sketches, the unit step (exact or sampled), ranks,
    the values at those ranks, estimates. Also returns how step 2 was computed."""
    levels = list(QUANTILE_LEVELS.values())
    points = {v: (sk.count, [sk.quantile(q) for q in levels]) for v, sk in sketches.items() if sk.count}
    thresholds = {v: xs for v, (_, xs) in points.items()}
    ok_units: dict[str, int] = {}
    for r in rows:
        ok_units[r["variant"]] = ok_units.get(r["variant"], 0) + int(r["ok_units"])
    indicators: dict[str, dict[str, Any]] = {}
    method = QuantileMethod("sketch", S.SKETCH_ACCURACY, "exact")
    if thresholds and sum(n for n, _ in points.values()) > options.exact_quantile_rows:
        sample = Q.indicator_rows(conn, scope, thresholds, sampled=True)
        if all(sample.get(v, {}).get("units", 0) >= options.min_sample_units for v in thresholds):
            indicators = {v: {**row, "scale_to": ok_units.get(v, row["units"])} for v, row in sample.items()}
            method = QuantileMethod("sketch", S.SKETCH_ACCURACY, "sample",
                                    {v: row["units"] for v, row in sample.items()})
    if thresholds and not indicators:
        indicators = Q.indicator_rows(conn, scope, thresholds, sampled=False)
    ranks: dict[str, list[S.QuantileRanks]] = {}
    bounds: dict[str, dict[int, float]] = {}
    for v, (n, _) in points.items():
        if v not in indicators:
            continue
        ranks[v] = [S.quantile_ranks(q, n, indicator_stats(indicators[v], j), options.alpha)
                    for j, q in enumerate(levels)]
        bounds[v] = sketches[v].values_at_ranks(r for rk in ranks[v] for r in (rk.rank_lower, rk.rank_upper))
    return quantile_estimates(points, indicators, bounds, ranks, keys, options.alpha), method


# --- per metric --------------------------------------------------------------------------

def _analyze(spec: MetricSpec, data: _Data, control: str, treatment: str,
             options: ReportOptions) -> S.MetricAnalysis:
    c, t = data.stats_of(spec, control), data.stats_of(spec, treatment)
    comparison = (S.compare_quantiles(c, t, options.alpha) if spec.shape == "quantile"
                  else S.welch_test(c, t, options.alpha))
    return S.analyze(comparison, spec.higher_is_better, options.n_star)


def _holm(analyses: Mapping[tuple[str, str], S.MetricAnalysis],
          alpha: float) -> tuple[dict[tuple[str, str], float | None], int]:
    """Holm across every metric x treatment comparison: adjusted p-values, and the family size."""
    raw = [a.comparison.absolute.p_value if a.comparison.absolute else None for a in analyses.values()]
    adj = S.adjust_p_values([clean(p) if p is not None else None for p in raw], method="holm", alpha=alpha)
    return dict(zip(analyses, adj.adjusted)), sum(p is not None for p in adj.raw)


def _metric(spec: MetricSpec, data: _Data, keys: Sequence[str], treatments: Sequence[str],
            analyses: Mapping[tuple[str, str], S.MetricAnalysis],
            adjusted: Mapping[tuple[str, str], float | None], options: ReportOptions) -> MetricResult:
    return MetricResult(
        spec.name, spec.kind, spec.shape, spec.role, "increase" if spec.higher_is_better else "decrease",
        spec.margin, spec.event_name, spec.window_s if spec.shape == "mean" else None,
        {v: estimate_view(data.stats_of(spec, v), options.alpha) for v in keys},
        tuple(comparison_view(t, analyses[(spec.name, t)], adjusted[(spec.name, t)], options.alpha)
              for t in treatments))


def _days(started: datetime | None, now: datetime) -> float | None:
    if started is None:
        return None
    return max((now - started).total_seconds() / 86_400, 1e-6)


def _evidence(spec: MetricSpec, analysis: S.MetricAnalysis, guardrail: bool) -> S.MetricEvidence:
    return S.metric_evidence(spec.name, spec.higher_is_better, analysis,
                             spec.guardrail_margin if guardrail else None)


def _recommend(treatment: str, specs: Sequence[MetricSpec], data: _Data,
               analyses: Mapping[tuple[str, str], S.MetricAnalysis], srm: S.SRMResult, control: str,
               days_elapsed: float | None,
               options: ReportOptions) -> tuple[S.Recommendation, TreatmentRecommendation]:
    primary = next((s for s in specs if s.role == "primary"), None)
    guard_specs = [s for s in specs if s.role == "guardrail"]
    guards = [_evidence(s, analyses[(s.name, treatment)], True) for s in guard_specs]
    power = None
    if primary is None:
        evidence = S.MetricEvidence("primary", None, None, None, True, error="no primary metric configured")
    else:
        evidence = _evidence(primary, analyses[(primary.name, treatment)], False)
        if primary.shape != "quantile":
            power = S.power_analysis(data.stats_of(primary, control), data.stats_of(primary, treatment),
                                     options.mde, True, options.alpha, days_elapsed=days_elapsed)
    rec = S.recommend(evidence, guards, srm, power)
    return rec, TreatmentRecommendation(
        treatment, rec.action, rec.reasons, primary.name if primary else None, rec.primary_status,
        tuple(GuardrailResult(g.name, st) for g, (_, st) in zip(guard_specs, rec.guardrail_statuses)),
        None if power is None else PowerPlan(
            options.mde, clean(power.absolute_mde), power.required_per_variant, power.current_per_variant,
            clean(power.achieved_power), clean(power.days_to_go), power.error))


def _timeseries(specs: Sequence[MetricSpec], data: _Data, control: str, treatments: Sequence[str],
                options: ReportOptions) -> TimeSeries | None:
    """The primary metric's (unless a quantile), else latency_ms's cumulative effect by day."""
    spec = next((s for s in specs if s.role == "primary" and s.shape != "quantile"), None) or next(
        (s for s in specs if s.name == "latency_ms"), None)
    source = data.daily.get(spec.name, {}) if spec is not None else {}
    return B.timeseries(spec, source, control, treatments, options.alpha, options.n_star)
