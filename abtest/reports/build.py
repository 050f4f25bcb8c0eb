"""The experiment report as a plain dict (the JSON body of ``GET /v1/experiments/<key>/report``).

``build_report(session, key, options)`` runs the queries of :mod:`abtest.reports.queries`
(sufficient statistics only) and feeds :mod:`abtest.stats`. Definitions the report commits to:

* Metrics: the built-ins ``latency_ms`` (mean of ok requests, ratio metric), ``latency_p50_ms``,
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

from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import stats as S
from ..models import AuditEntry, Experiment
from ..services.experiment_spec import BUILTIN_METRICS
from ..services.experiments import get_experiment
from . import queries as Q
from .metrics import (
    QUANTILE_LEVELS,
    MetricSpec,
    by_day,
    indicator_stats,
    clean,
    comparison_view,
    estimate_view,
    mean_stats,
    quantile_estimates,
    ratio_stats,
    total,
)

__all__ = ["ReportOptions", "build_report", "metric_specs"]


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


def metric_specs(exp: Experiment) -> list[MetricSpec]:
    """Built-ins first (with any configured role/margin), then the configured event metrics."""
    configured = {m.name: m for m in exp.metrics}
    specs = []
    for name, direction in BUILTIN_METRICS.items():
        m = configured.get(name)
        shape = "quantile" if name in QUANTILE_LEVELS else "ratio"
        specs.append(MetricSpec(name, shape, "builtin", m.role if m else "secondary",
                                (m.direction if m else direction) == "increase", m.margin if m else 0.0))
    for m in exp.metrics:
        if m.kind != "builtin":
            specs.append(MetricSpec(m.name, "mean", m.kind, m.role, m.direction == "increase", m.margin,
                                    m.event_name, m.attribution_window_s))
    return specs


def build_report(session: Session, key: str, options: ReportOptions = ReportOptions()) -> dict[str, Any]:
    """The whole report; raises NotFound for an unknown experiment key."""
    exp = get_experiment(session, key)
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
    srm = _srm(keys, arms, exposed)
    data = _collect(conn, scope, exp.key, specs, keys, options, exposed_days)

    metrics_out = []
    analyses: dict[tuple[str, str], S.MetricAnalysis] = {}
    for spec in specs:
        view, per_treatment = _metric(spec, data, control, treatments, options)
        metrics_out.append(view)
        analyses.update({(spec.name, t): a for t, a in per_treatment.items()})
    adjustment = _adjust(metrics_out, options.alpha)

    days_elapsed = _days(exp.started_at, now)
    recs = [_recommend(t, specs, data, analyses, srm, control, days_elapsed, options) for t in treatments]
    report = {
        "experiment": _experiment_block(session, exp),
        "generated_at": now.isoformat(),
        "options": {"alpha": options.alpha, "cap": options.cap, "cap_value_ms": data.get("cap_value"),
                    "quantiles": data.get("quantile_method"),
                    "mde": options.mde, "n_star": options.n_star,
                    "multiple_testing": {"method": "holm", "family": adjustment},
                    "recommendation_basis": "sequential (always-valid) CIs: absolute; relative for guardrails with a margin"},
        "srm": _srm_block(srm, keys, exposed, arms),
        "variants": _variant_block(arms, exposed, data.get("requests_by_variant", {})),
        "metrics": metrics_out,
        "recommendation": _overall(recs),
        "recommendations": recs,
        "timeseries": _timeseries(specs, data, control, treatments, options) if options.metrics is None else None,
        "latency_histogram": data.get("histogram"),
        "shadow": [{k: clean(v) for k, v in row.items()} for row in data.get("shadow", [])],
    }
    return report


# --- data collection ---------------------------------------------------------------------

def _collect(conn: Any, scope: Q.Scope, key: str, specs: Sequence[MetricSpec], keys: Sequence[str],
             options: ReportOptions, exposed_days: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Run each query once: the unit rollup (or the capped log scan), the sketches and the
    quantile CIs, event sums per metric, then the histogram and shadow extras."""
    Q.tune_session(conn)
    data: dict[str, Any] = {}
    shapes = {s.shape for s in specs}
    sketches = Q.sketches(conn, scope) if "quantile" in shapes or options.cap or options.histogram else {}
    if shapes & {"ratio", "quantile"}:
        pooled = sum(sketches.values(), S.LatencySketch())
        cap_value = pooled.quantile(options.cap) if options.cap and pooled.count else None
        data["cap_value"] = cap_value
        rows = Q.request_rows(conn, scope, cap_value) if cap_value is not None else Q.unit_rows(conn, scope)
        data["ratio"] = {m: ratio_stats(rows, m) for m in ("latency_ms", "error_rate")}
        data["requests_by_variant"] = _request_counts(rows)
        if "quantile" in shapes:
            data["quantiles"], data["quantile_method"] = _quantiles(conn, scope, keys, sketches, rows, options)
    events: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    for s in specs:
        if s.shape == "mean":
            source = (s.event_name or s.name, s.window_s)
            if source not in events:
                events[source] = Q.event_rows(conn, scope, key, *source, exposed_days)
            data[f"mean:{s.name}"] = mean_stats(events[source][s.kind])
    if options.histogram and options.metrics is None:
        data["histogram"] = _histogram(sketches)
    if options.metrics is None:
        data["shadow"] = Q.shadow_rows(conn, scope)
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
               rows: Sequence[Mapping[str, Any]], options: ReportOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """Quantile steps 1-4: estimates from the sketches, the unit step (exact or sampled), ranks,
    the values at those ranks, estimates. Also returns how step 2 was computed."""
    levels = list(QUANTILE_LEVELS.values())
    points = {v: (sk.count, [sk.quantile(q) for q in levels]) for v, sk in sketches.items() if sk.count}
    thresholds = {v: xs for v, (_, xs) in points.items()}
    ok_units: dict[str, int] = {}
    for r in rows:
        ok_units[r["variant"]] = ok_units.get(r["variant"], 0) + int(r["ok_units"])
    indicators: dict[str, dict[str, Any]] = {}
    method = {"estimates": "sketch", "relative_accuracy": S.SKETCH_ACCURACY, "unit_step": "exact"}
    if thresholds and sum(n for n, _ in points.values()) > options.exact_quantile_rows:
        sample = Q.indicator_rows(conn, scope, thresholds, sampled=True)
        if all(sample.get(v, {}).get("units", 0) >= options.min_sample_units for v in thresholds):
            indicators = {v: {**row, "scale_to": ok_units.get(v, row["units"])} for v, row in sample.items()}
            method.update(unit_step="sample", sampled_units={v: row["units"] for v, row in sample.items()})
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
    estimates = quantile_estimates(points, indicators, bounds, ranks, keys, options.alpha)
    return {"estimates": estimates, "points": points}, method


def _histogram(sketches: Mapping[str, S.LatencySketch]) -> dict[str, Any] | None:
    """Latency distribution per variant over [0, 1.05 x the largest variant p99), for the page."""
    p99s = [sk.quantile(0.99) for sk in sketches.values() if sk.count]
    if not p99s or max(p99s) <= 0:
        return None
    upper = max(p99s) * 1.05
    bins = 40
    counts = {v: sk.histogram(upper, bins) for v, sk in sketches.items() if sk.count}
    return {"bin_width_ms": upper / bins, "upper_ms": upper, "counts": counts,
            "note": "last bin: requests at or above upper_ms"}


# --- per metric --------------------------------------------------------------------------

def _stats_of(spec: MetricSpec, data: Mapping[str, Any], variant: str) -> Any:
    if spec.shape == "quantile":
        return data["quantiles"]["estimates"][spec.name][variant]
    days = (data["ratio"][spec.name] if spec.shape == "ratio" else data[f"mean:{spec.name}"]).get(variant)
    return total(days, spec.shape == "ratio")


def _compare(spec: MetricSpec, c: Any, t: Any, alpha: float) -> S.Comparison:
    if spec.shape == "quantile":
        return S.compare_quantiles(c, t, alpha)
    return S.welch_test(c, t, alpha)


def _metric(spec: MetricSpec, data: Mapping[str, Any], control: str, treatments: Sequence[str],
            options: ReportOptions) -> tuple[dict[str, Any], dict[str, S.MetricAnalysis]]:
    stats = {v: _stats_of(spec, data, v) for v in (control, *treatments)}
    analyses = {t: S.analyze(_compare(spec, stats[control], stats[t], options.alpha),
                             spec.higher_is_better, options.n_star) for t in treatments}
    view = {
        "name": spec.name, "kind": spec.kind, "shape": spec.shape, "role": spec.role,
        "direction": "increase" if spec.higher_is_better else "decrease", "margin": spec.margin,
        "event": spec.event_name, "attribution_window_s": spec.window_s if spec.shape == "mean" else None,
        "variants": {v: estimate_view(s, options.alpha) for v, s in stats.items()},
        "comparisons": [comparison_view(t, a) for t, a in analyses.items()],
    }
    return view, analyses


def _adjust(metrics_out: list[dict[str, Any]], alpha: float) -> int:
    """Holm across every metric x treatment comparison; fills adjusted_p_value/significant."""
    comps = [c for m in metrics_out for c in m["comparisons"]]
    adj = S.adjust_p_values([c["p_value"] for c in comps], method="holm", alpha=alpha)
    for c, a in zip(comps, adj.adjusted):
        c["adjusted_p_value"] = a
        c["significant"] = a is not None and a < alpha
    return sum(p is not None for p in adj.raw)


def _days(started: datetime | None, now: datetime) -> float | None:
    if started is None:
        return None
    return max((now - started).total_seconds() / 86_400, 1e-6)


def _evidence(spec: MetricSpec, analysis: S.MetricAnalysis, guardrail: bool) -> S.MetricEvidence:
    """Sequential evidence for the decision rules.

    Without a margin only the sign matters, and the absolute CI decides it: it has the same sign
    as the relative lift but no delta-method blow-up near a zero baseline (an error rate of 1%
    vs 20% is unmistakable in absolute terms, yet its relative CI can span zero). A guardrail
    with a relative margin is judged on the relative CI against that margin.
    """
    seq = analysis.sequential
    margin = spec.guardrail_margin if guardrail else None
    exact = _constant_difference(spec, analysis, margin)
    if exact is not None:
        return exact
    if margin is not None:
        error = seq.error or analysis.comparison.relative_error
        return S.MetricEvidence.from_effect(spec.name, seq.relative, spec.higher_is_better, margin, True, error)
    return S.MetricEvidence.from_effect(f"{spec.name} difference", seq.absolute, spec.higher_is_better, None,
                                        False, seq.error)


def _constant_difference(spec: MetricSpec, analysis: S.MetricAnalysis,
                         margin: float | None) -> S.MetricEvidence | None:
    """Both arms constant (e.g. no errors at all in either): the difference is known exactly.

    No test is possible, yet the evidence is complete: an error rate of 0 against 0 is no harm,
    so the guardrail holds instead of being "unavailable" forever.
    """
    c = analysis.comparison
    if c.error != S.MSG_ZERO_VARIANCE or margin is not None or c.control_mean is None or c.treatment_mean is None:
        return None
    d = c.treatment_mean - c.control_mean
    return S.MetricEvidence(spec.name, d, d, d, spec.higher_is_better, None, False)


def _recommend(treatment: str, specs: Sequence[MetricSpec], data: Mapping[str, Any],
               analyses: Mapping[tuple[str, str], S.MetricAnalysis], srm: S.SRMResult, control: str,
               days_elapsed: float | None, options: ReportOptions) -> dict[str, Any]:
    primary = next((s for s in specs if s.role == "primary"), None)
    guard_specs = [s for s in specs if s.role == "guardrail"]
    guards = [_evidence(s, analyses[(s.name, treatment)], True) for s in guard_specs]
    power = None
    if primary is None:
        evidence = S.MetricEvidence("primary", None, None, None, True, error="no primary metric configured")
    else:
        evidence = _evidence(primary, analyses[(primary.name, treatment)], False)
        if primary.shape != "quantile":
            power = S.power_analysis(_stats_of(primary, data, control), _stats_of(primary, data, treatment),
                                     options.mde, True, options.alpha, days_elapsed=days_elapsed)
    rec = S.recommend(evidence, guards, srm, power)
    return {
        "variant": treatment, "action": rec.action, "reasons": list(rec.reasons),
        "primary_metric": primary.name if primary else None, "primary_status": rec.primary_status,
        "guardrails": [{"metric": g.name, "status": st} for g, (_, st) in zip(guard_specs, rec.guardrail_statuses)],
        "power": None if power is None else {
            "mde_relative": options.mde, "absolute_mde": clean(power.absolute_mde),
            "required_units_per_variant": power.required_per_variant,
            "current_units_per_variant": power.current_per_variant,
            "achieved_power": clean(power.achieved_power), "days_to_go": clean(power.days_to_go),
            "error": power.error},
    }


def _overall(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One headline: a shipping treatment if any, else keep running if any, else roll back."""
    for action in ("ship", "keep running", "roll back"):
        for rec in recs:
            if rec["action"] == action:
                return {"action": action, "variant": rec["variant"], "reasons": rec["reasons"]}
    return {"action": "keep running", "variant": None, "reasons": ["no treatment variant"]}


# --- blocks ------------------------------------------------------------------------------

def _experiment_block(session: Session, exp: Experiment) -> dict[str, Any]:
    breach = session.scalar(select(AuditEntry).where(
        AuditEntry.experiment_id == exp.id, AuditEntry.action == "guardrail_breach")
        .order_by(AuditEntry.id.desc()).limit(1))
    iso = (lambda d: d.isoformat() if d else None)
    return {
        "key": exp.key, "name": exp.name, "hypothesis": exp.hypothesis, "owner": exp.owner,
        "status": exp.status, "phase": exp.phase, "treatment_paused": exp.treatment_paused,
        "created_at": iso(exp.created_at), "started_at": iso(exp.started_at),
        "stopped_at": iso(exp.stopped_at), "updated_at": iso(exp.updated_at),
        "last_guardrail_breach": None if breach is None else {
            "at": breach.at.isoformat(), "actor": breach.actor, **breach.changes},
    }


def _srm(keys: Sequence[str], arms: Sequence[Any], exposed: Mapping[str, int]) -> S.SRMResult:
    """Pearson chi-square of exposed units; a dark launch (one served arm) has nothing to check."""
    counts = [exposed.get(k, 0) for k in keys]
    if len(arms) < 2:
        return S.SRMResult(tuple(counts), tuple(float(c) for c in counts), 0.0, 0, 1.0,
                           S.DEFAULT_SRM_THRESHOLD, False, "one served variant; sample ratio not checked")
    return S.srm_test(counts, [max(v.weight, 1e-12) for v in arms])


def _srm_block(srm: S.SRMResult, keys: Sequence[str], exposed: Mapping[str, int],
               arms: Sequence[Any]) -> dict[str, Any]:
    total_w = sum(v.weight for v in arms) or 1.0
    return {
        "flagged": srm.flagged, "p_value": clean(srm.p_value), "chi2": clean(srm.chi2),
        "threshold": srm.threshold, "message": srm.message,
        "variants": [{"variant": k, "units": exposed.get(k, 0), "weight": v.weight / total_w,
                      "expected": clean(e)} for k, v, e in zip(keys, arms, srm.expected)],
    }


def _variant_block(arms: Sequence[Any], exposed: Mapping[str, int],
                   requests: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
    empty = {"units_with_requests": 0, "requests": 0, "rejected": 0, "unavailable": 0}
    return [{"variant": v.key, "engine": v.engine, "control": v.is_control, "weight": v.weight,
             "units": exposed.get(v.key, 0), **requests.get(v.key, empty)} for v in arms]


def _timeseries(specs: Sequence[MetricSpec], data: Mapping[str, Any], control: str,
                treatments: Sequence[str], options: ReportOptions) -> dict[str, Any] | None:
    """Cumulative relative effect by day (units by first activity) with the sequential bounds."""
    spec = next((s for s in specs if s.role == "primary" and s.shape != "quantile"), None) or next(
        (s for s in specs if s.name == "latency_ms"), None)
    if spec is None or not treatments:
        return None
    source = data["ratio"][spec.name] if spec.shape == "ratio" else data.get(f"mean:{spec.name}", {})
    days = sorted({d for per in source.values() for d in per})
    ratio = spec.shape == "ratio"
    series = {}
    for t in treatments:
        points = []
        for day, c, tr in zip(days, by_day(source.get(control), days, ratio), by_day(source.get(t), days, ratio)):
            comp = S.welch_test(c, tr, options.alpha)
            seq = S.sequential_test(comp, options.n_star)
            rel, srel = comp.relative, seq.relative
            points.append({"day": day, "units": comp.n_total, "estimate": clean(rel.estimate) if rel else None,
                           "ci_lower": clean(rel.ci_lower) if rel else None,
                           "ci_upper": clean(rel.ci_upper) if rel else None,
                           "seq_lower": clean(srel.ci_lower) if srel else None,
                           "seq_upper": clean(srel.ci_upper) if srel else None})
        series[t] = points
    return {"metric": spec.name, "scale": "relative", "by": "day of first activity (cumulative)",
            "series": series}
