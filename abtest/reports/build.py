"""The experiment report: a :class:`~abtest.reports.model.Report` (its ``to_json()`` is the JSON body of
``GET /v1/experiments/<key>/report``).

``build_report(session, key, options)`` runs the queries of :mod:`abtest.reports.queries`
(sufficient statistics only) and feeds :mod:`abtest.stats`. Definitions the report commits to:

* Metrics: the built-ins of :mod:`abtest.reports.catalogue`: ``latency_ms`` (mean of ok requests, ratio metric), ``latency_p50_ms``,
  ``latency_p95_ms``, ``latency_p99_ms`` (cluster-aware quantiles), ``error_rate`` (ratio),
  ``ttft_ms`` (ratio) with ``ttft_p50_ms`` and ``ttft_p95_ms`` (quantiles), ``completion_tokens``,
  ``tokens_per_s``, ``truncation_rate``, ``engine_ms`` and ``cost_per_request`` (ratios), then
  the experiment's event metrics (``cost_per_event`` ones are ratios too) in their configured
  order. A metric whose column older rows lack (NULL) leaves them out, and its ``note`` says how
  many; a cost metric of a variant whose engine has no price is unavailable, with that reason.
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
from . import cohorts as CO
from . import queries as Q
from . import segments
from .metrics import (
    MetricSpec,
    Unavailable,
    compare,
    comparison_view,
    cost_event_stats,
    estimate_view,
    indicator_stats,
    left_out,
    left_out_note,
    mean_stats,
    quantile_estimates,
    ratio_stats,
    total,
    unpriced,
)
from .catalogue import BUILTIN_BY_NAME, COST_SOURCES, QUANTILE_SOURCES, quantile_levels, ratio_metrics
from .model import (
    GuardrailResult,
    MetricResult,
    MultipleTesting,
    Options,
    OverallRecommendation,
    PowerPlan,
    PrimaryBasis,
    QualitySection,
    QuantileMethod,
    Report,
    TimeSeries,
    TreatmentRecommendation,
    clean,
)
from ..errors import NotFound
from .counts import with_counts
from .headline import with_headline
from .quality import quality_section
from .specs import metric_specs

__all__ = ["ReportOptions", "Report", "build_report", "metric_specs", "metric_statistics"]

BREACH_ACTION = "guardrail_breach"
_BASIS = ("sequential (always-valid) CIs: absolute for a superiority primary and guardrails without a "
          "margin; relative for a non-inferiority primary and guardrails with a margin (equivalence: "
          "inside +/- margin)")


@dataclass(frozen=True)
class ReportOptions:
    """Knobs of a report. ``metrics`` restricts the analysis to those names (guardrail checks);
    ``histogram`` adds the latency distribution per variant (the HTML page's); ``phase`` reads an
    earlier phase's results (None: the current phase)."""

    alpha: float = 0.05
    cap: float | None = None
    mde: float = 0.05
    n_star: float = S.DEFAULT_N_STAR
    histogram: bool = False
    exact_quantile_rows: int = 1_000_000
    min_sample_units: int = 1000
    metrics: tuple[str, ...] | None = None
    now: datetime | None = field(default=None, compare=False)
    phase: int | None = None

    def phase_of(self, exp: Any) -> int:
        """The phase to read: ``phase``, or the experiment's current one; NotFound for a phase
        the experiment never had (phases are numbered from 1)."""
        if self.phase is None:
            return int(exp.phase)
        if not 1 <= self.phase <= exp.phase:
            raise NotFound(f"experiment {exp.key!r} has no phase {self.phase} "
                           f"(phases 1 to {exp.phase}; the current one is {exp.phase})",
                           details={"field": "phase"})
        return self.phase


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
    notes: dict[str, str] = field(default_factory=dict)  # metric -> what its figures leave out
    unavailable: dict[str, dict[str, Unavailable]] = field(default_factory=dict)  # metric -> variant -> why
    cuped: segments.CupedSums = field(default_factory=dict)  # metric -> CUPED sums
    cohorts: CO.Cohorts = field(default_factory=dict)  # sticky, several cohorts: metric -> cohort -> variant
    estimators: dict[str, Any] = field(default_factory=dict)  # metric -> EstimatorView

    def stats_of(self, spec: MetricSpec, variant: str) -> Any:
        missing = self.unavailable.get(spec.name, {}).get(variant)
        if missing is not None:
            return missing
        if spec.shape == "quantile":
            return self.quantiles[spec.name][variant]
        return total(self.daily[spec.name].get(variant), spec.shape == "ratio")


def build_report(session: Session, key: str, options: ReportOptions = ReportOptions()) -> Report:
    """The whole report; raises NotFound for an unknown experiment key."""
    exp = Q.experiment(session, key)
    conn = session.connection()
    scope = Q.Scope(exp.id, options.phase_of(exp), conn.dialect.name)
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
    # a sticky experiment's later phase also holds units kept from earlier ones: SRM counts
    # only the units drawn with this phase's weights
    srm_counts = Q.fresh_exposure_counts(conn, scope) if getattr(exp, "sticky", False) else exposed
    srm = B.srm_result(keys, arms, srm_counts)
    data = _collect(conn, scope, exp.key, specs, keys, options, exposed_days)
    data.cohorts, data.estimators = CO.collect(conn, scope, exp, specs, keys, data.cap_value is not None,
                                               data.unavailable)
    # no CUPED where a variant's figure is unavailable, on a capped latency (its covariate is not
    # capped), nor on a metric compared per allocation cohort
    data.cuped = segments.cuped_stats(conn, scope, exp, specs, keys, skip={
        *data.unavailable, *(("latency_ms",) if data.cap_value is not None else ()), *data.cohorts})

    analyses = {(s.name, t): _analyze(s, data, control, t, options) for s in specs for t in treatments}
    adjusted, family = _holm(analyses, options.alpha)
    metrics = tuple(_metric(s, data, keys, treatments, analyses, adjusted, options, exp) for s in specs)
    days_elapsed = _days(exp.started_at, now)
    quality = quality_section(conn, scope, exp) if options.metrics is None else None
    floors = {v.key: _quality_floor(v, quality, options.alpha) for v in arms if v.quality_min_agreement is not None}
    recs = [_recommend(t, specs, data, analyses, srm, control, days_elapsed, options, exp.decision,
                       floors.get(t)) for t in treatments]
    top = S.headline([(t, rec) for t, (rec, _) in zip(treatments, recs)])
    return with_headline(Report(
        recommendation=OverallRecommendation(top.action, top.variant, top.reasons),
        headline="",
        experiment=B.experiment_info(exp, Q.last_audit_entry(session, exp.id, BREACH_ACTION)),
        generated_at=now.replace(microsecond=0).isoformat(),
        options=Options(options.alpha, options.cap, data.cap_value, data.quantile_method, options.mde,
                        options.n_star, MultipleTesting("holm", family), _BASIS,
                        decision=getattr(exp, "decision", None) or "superiority", phase=scope.phase),
        srm=B.srm_block(srm, keys, srm_counts, arms),
        variants=B.variant_summaries(arms, exposed, data.requests_by_variant),
        metrics=with_counts(metrics, {s.name: {v: data.stats_of(s, v) for v in keys}
                                      for s in specs if s.shape != "quantile"}),
        recommendations=tuple(view for _, view in recs),
        timeseries=_timeseries(specs, data, control, treatments, options) if options.metrics is None else None,
        latency_histogram=data.histogram,
        shadow=data.shadow,
        quality=quality,
        segments=(segments.segment_sections(conn, scope, exp, specs, arms, control, treatments, options.alpha)
                  or None) if options.metrics is None else None,
    ))


# --- data collection ---------------------------------------------------------------------

def metric_statistics(session: Session, exp: Any, spec: MetricSpec) -> dict[str, Any]:
    """Per non-shadow variant, the plain (unadjusted, uncapped) statistic the report analyses for
    ``spec`` in the current phase, or its :class:`Unavailable` reason (the power planner's input)."""
    conn = session.connection()
    scope = Q.Scope(exp.id, int(exp.phase), conn.dialect.name)
    keys = [v.key for v in exp.variants if not v.shadow]
    data = _collect(conn, scope, exp.key, [spec], keys, ReportOptions(metrics=(spec.name,)),
                    Q.exposure_days(conn, scope))
    return {v: data.stats_of(spec, v) for v in keys}



def _collect(conn: Any, scope: Q.Scope, key: str, specs: Sequence[MetricSpec], keys: Sequence[str],
             options: ReportOptions, exposed_days: Sequence[Mapping[str, Any]]) -> _Data:
    """Run each query once: the unit rollup (or the capped log scan), the sketches and the
    quantile CIs of each quantile source, event sums per metric, then the histogram and shadow
    extras; and what the figures leave out (notes) or cannot show (an engine without a price)."""
    Q.tune_session(conn)
    data = _Data()
    shapes = {s.shape for s in specs}
    names = {s.name for s in specs}
    sketches = Q.sketches(conn, scope) if "quantile" in shapes or options.cap or options.histogram else {}
    rows: list[dict[str, Any]] = []
    if shapes & {"ratio", "quantile"}:
        pooled = sum(sketches.values(), S.LatencySketch())
        data.cap_value = pooled.quantile(options.cap) if options.cap and pooled.count else None
        rows = (Q.request_rows(conn, scope, data.cap_value) if data.cap_value is not None
                else Q.unit_rows(conn, scope))
        data.daily.update({m.name: ratio_stats(rows, m.name) for m in ratio_metrics()})
        data.requests_by_variant = _request_counts(rows)
        for source, column in QUANTILE_SOURCES.items():
            if not names & set(quantile_levels(source)):
                continue
            found = sketches if column == "latency_ms" else Q.sketches(conn, scope, "ttft_buckets")
            quantiles, method = _quantiles(conn, scope, keys, found, rows, options, source)
            data.quantiles.update(quantiles)
            if data.quantile_method is None or column == "latency_ms":
                data.quantile_method = method
    events: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    for s in specs:
        if s.kind == "cost_per_event":
            data.daily[s.name] = cost_event_stats(Q.cost_event_rows(conn, scope, key, s.event_name or s.name,
                                                                    s.window_s))
        elif s.shape == "mean":
            source = (s.event_name or s.name, s.window_s)
            if source not in events:
                events[source] = Q.event_rows(conn, scope, key, *source, exposed_days)
            data.daily[s.name] = mean_stats(events[source][s.kind])
    if options.histogram and options.metrics is None:
        data.histogram = B.histogram(sketches)
    if options.metrics is None:
        data.shadow = B.shadow_summaries(Q.shadow_rows(conn, scope))
    _missing(conn, scope, specs, rows, data)
    return data


def _missing(conn: Any, scope: Q.Scope, specs: Sequence[MetricSpec], rows: Sequence[Mapping[str, Any]],
             data: _Data) -> None:
    """Notes of the metrics whose column older rows lack, and the cost metrics of variants with
    ok requests that have an engine time but no cost (their engine has no price): unavailable."""
    costs = [s for s in specs if s.kind == "cost_per_event"
             or (s.kind == "builtin" and BUILTIN_BY_NAME[s.name].source in COST_SOURCES)]
    for s in specs:
        metric = "cost_per_request" if s.kind == "cost_per_event" else s.name
        if metric in BUILTIN_BY_NAME:
            note = left_out_note(left_out(rows, metric), metric)
            if note:
                data.notes[s.name] = note
    units: dict[str, int] = {}
    for r in rows:
        if r["unpriced"] > 0:
            units[r["variant"]] = units.get(r["variant"], 0) + int(r["units"])
    if not (units and costs):
        return
    engines = Q.variant_engines(conn, scope)
    for s in costs:
        data.unavailable[s.name] = {v: Unavailable(unpriced(engines.get(v, v)), n) for v, n in units.items()}
        data.daily[s.name] = {v: days for v, days in data.daily.get(s.name, {}).items() if v not in units}


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
               rows: Sequence[Mapping[str, Any]], options: ReportOptions,
               source: str = "latency") -> tuple[dict[str, dict[str, S.QuantileEstimate]], QuantileMethod]:
    """Quantile steps 1-4 for the quantile metrics of one source (latency, ttft): estimates from
    its sketches, the unit step (exact or sampled), ranks, the values at those ranks, estimates.
    Also returns how step 2 was computed."""
    named = quantile_levels(source)
    column = QUANTILE_SOURCES[source]
    levels = list(named.values())
    points = {v: (sk.count, [sk.quantile(q) for q in levels]) for v, sk in sketches.items() if sk.count}
    thresholds = {v: xs for v, (_, xs) in points.items()}
    ok_units: dict[str, int] = {}
    for r in rows:
        ok_units[r["variant"]] = ok_units.get(r["variant"], 0) + int(
            r["ok_units" if column == "latency_ms" else "ttft_units"])
    indicators: dict[str, dict[str, Any]] = {}
    method = QuantileMethod("sketch", S.SKETCH_ACCURACY, "exact")
    if thresholds and sum(n for n, _ in points.values()) > options.exact_quantile_rows:
        sample = Q.indicator_rows(conn, scope, thresholds, sampled=True, column=column)
        if all(sample.get(v, {}).get("units", 0) >= options.min_sample_units for v in thresholds):
            indicators = {v: {**row, "scale_to": ok_units.get(v, row["units"])} for v, row in sample.items()}
            method = QuantileMethod("sketch", S.SKETCH_ACCURACY, "sample",
                                    {v: row["units"] for v, row in sample.items()})
    if thresholds and not indicators:
        indicators = Q.indicator_rows(conn, scope, thresholds, sampled=False, column=column)
    ranks: dict[str, list[S.QuantileRanks]] = {}
    bounds: dict[str, dict[int, float]] = {}
    for v, (n, _) in points.items():
        if v not in indicators:
            continue
        ranks[v] = [S.quantile_ranks(q, n, indicator_stats(indicators[v], j), options.alpha)
                    for j, q in enumerate(levels)]
        bounds[v] = sketches[v].values_at_ranks(r for rk in ranks[v] for r in (rk.rank_lower, rk.rank_upper))
    return quantile_estimates(points, indicators, bounds, ranks, keys, options.alpha, named), method


# --- per metric --------------------------------------------------------------------------

def _analyze(spec: MetricSpec, data: _Data, control: str, treatment: str,
             options: ReportOptions) -> S.MetricAnalysis:
    c, t = data.stats_of(spec, control), data.stats_of(spec, treatment)
    if spec.name in data.cuped:  # regression-adjusted (CUPED) with the pair's pooled theta
        c, t = S.cuped_adjust(data.cuped[spec.name][0][control], data.cuped[spec.name][0][treatment])
    if spec.name in data.cohorts:  # sticky, after an allocation change: per cohort, pooled
        comparison = CO.stratified_comparison(data.cohorts[spec.name], control, treatment, options.alpha)
    else:
        comparison = (S.compare_quantiles(c, t, options.alpha) if spec.shape == "quantile"
                      else compare(c, t, options.alpha))
    return S.analyze(comparison, spec.higher_is_better, options.n_star)


def _holm(analyses: Mapping[tuple[str, str], S.MetricAnalysis],
          alpha: float) -> tuple[dict[tuple[str, str], float | None], int]:
    """Holm across every metric x treatment comparison: adjusted p-values, and the family size."""
    raw = [a.comparison.absolute.p_value if a.comparison.absolute else None for a in analyses.values()]
    adj = S.adjust_p_values([clean(p) if p is not None else None for p in raw], method="holm", alpha=alpha)
    return dict(zip(analyses, adj.adjusted)), sum(p is not None for p in adj.raw)


def _metric(spec: MetricSpec, data: _Data, keys: Sequence[str], treatments: Sequence[str],
            analyses: Mapping[tuple[str, str], S.MetricAnalysis],
            adjusted: Mapping[tuple[str, str], float | None], options: ReportOptions, exp: Any = None) -> MetricResult:
    return MetricResult(
        spec.name, spec.kind, spec.shape, spec.role, "increase" if spec.higher_is_better else "decrease",
        spec.margin, spec.event_name, spec.window_s if spec.event_name is not None else None,
        {v: estimate_view(data.stats_of(spec, v), options.alpha) for v in keys},
        tuple(comparison_view(t, analyses[(spec.name, t)], adjusted[(spec.name, t)], options.alpha)
              for t in treatments), note=data.notes.get(spec.name),
        cuped=segments.cuped_view(exp, *data.cuped[spec.name], keys[0], treatments) if spec.name in data.cuped else None,
        estimator=data.estimators.get(spec.name))


def _days(started: datetime | None, now: datetime) -> float | None:
    if started is None:
        return None
    return max((now - started).total_seconds() / 86_400, 1e-6)


def _evidence(spec: MetricSpec, analysis: S.MetricAnalysis, margin: float | None) -> S.MetricEvidence:
    """Evidence for the rule table: ``margin`` relative (None: the sign of the absolute CI decides);
    ``unit`` words it (a built-in's catalogue unit; a binary event metric is a share, a cost per
    event a price)."""
    builtin = BUILTIN_BY_NAME.get(spec.name) if spec.kind == "builtin" else None
    unit = (builtin.unit if builtin is not None else "share" if spec.kind == "binary"
            else "price" if spec.kind == "cost_per_event" else "number")
    return S.metric_evidence(spec.name, spec.higher_is_better, analysis, margin,
                             spec.test if margin is not None else None, unit)


def _quality_floor(variant: Any, quality: QualitySection | None, alpha: float) -> S.MetricEvidence:
    """The guardrail of a variant's ``quality_min_agreement``: its top-1 agreement with its
    quality reference (per-unit CI of the report's quality section) must reach the floor."""
    name = f"top-1 agreement with {variant.quality_reference}"
    found = next((r for r in (quality.results if quality else ()) if r.comparison == "reference"
                  and r.variant == variant.key and r.method == "logprobs"), None)
    a = found.agreement if found is not None else None
    if a is None or a.estimate is None or a.ci_lower is None or a.ci_upper is None:
        why = (a.error if a is not None and a.error else "no scored requests yet") or "no scored requests yet"
        return S.MetricEvidence(name, None, None, None, True, error=why, test="floor",
                                floor=variant.quality_min_agreement, unit="share")
    return S.MetricEvidence(name, a.estimate, a.ci_lower, a.ci_upper, True, None, False, unit="share",
                            test="floor", floor=variant.quality_min_agreement, alpha=alpha, interval="per-unit")


def _recommend(treatment: str, specs: Sequence[MetricSpec], data: _Data,
               analyses: Mapping[tuple[str, str], S.MetricAnalysis], srm: S.SRMResult, control: str,
               days_elapsed: float | None, options: ReportOptions, decision: str = "superiority",
               quality_floor: S.MetricEvidence | None = None) -> tuple[S.Recommendation, TreatmentRecommendation]:
    """The rule table for one treatment under the experiment's ``decision`` policy: a superiority
    primary on its absolute CI with a power plan for ``mde``; a non-inferiority primary on its
    relative CI against its margin, with the units needed to show non-inferiority there."""
    primary = next((s for s in specs if s.role == "primary"), None)
    guard_specs = [s for s in specs if s.role == "guardrail"]
    guards = [_evidence(s, analyses[(s.name, treatment)], s.guardrail_margin) for s in guard_specs]
    if quality_floor is not None:
        guards.append(quality_floor)
    power = None
    non_inferiority = decision == "non_inferiority" and primary is not None and primary.margin > 0
    if primary is None:
        evidence = S.MetricEvidence("primary", None, None, None, True, error="no primary metric configured")
    else:
        evidence = _evidence(primary, analyses[(primary.name, treatment)],
                             primary.margin if non_inferiority else None)
        if primary.shape != "quantile":
            c, t = data.stats_of(primary, control), data.stats_of(primary, treatment)
            power = (S.noninferiority_plan(c, t, primary.margin, True, options.alpha, days_elapsed=days_elapsed,
                                           n_star=options.n_star) if non_inferiority
                     else S.power_analysis(c, t, options.mde, True, options.alpha, days_elapsed=days_elapsed))
    rec = S.recommend(evidence, guards, srm, power, "non_inferiority" if non_inferiority else "superiority",
                      treatment)
    basis = None if primary is None else PrimaryBasis(
        rec.decision, primary.name, "relative" if evidence.relative else "absolute", evidence.interval,
        1.0 - evidence.alpha, clean(evidence.estimate), clean(evidence.ci_lower), clean(evidence.ci_upper),
        evidence.margin)
    return rec, TreatmentRecommendation(
        treatment, rec.action, rec.reasons, primary.name if primary else None, rec.primary_status,
        tuple(GuardrailResult(name, st) for name, st in zip(
            [g.name for g in guard_specs] + ([quality_floor.name] if quality_floor else []),
            (st for _, st in rec.guardrail_statuses))),
        None if power is None else PowerPlan(
            primary.margin if non_inferiority else options.mde, clean(power.absolute_mde),  # type: ignore[union-attr]
            power.required_per_variant, power.current_per_variant, clean(power.achieved_power),
            clean(power.days_to_go), power.error, power.kind, power.fixed_horizon_per_variant),
        basis)


def _timeseries(specs: Sequence[MetricSpec], data: _Data, control: str, treatments: Sequence[str],
                options: ReportOptions) -> TimeSeries | None:
    """The primary metric's (unless a quantile), else latency_ms's cumulative effect by day."""
    spec = next((s for s in specs if s.role == "primary" and s.shape != "quantile"), None) or next(
        (s for s in specs if s.name == "latency_ms"), None)
    source = data.daily.get(spec.name, {}) if spec is not None else {}
    return B.timeseries(spec, source, control, treatments, options.alpha, options.n_star)
