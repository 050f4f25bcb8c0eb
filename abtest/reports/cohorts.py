"""A sticky experiment's comparisons after an allocation change, post-stratified by cohort.

With ``"sticky": true`` a weight change opens a new phase whose enrolled units keep their
variant: the phase then holds units first assigned in earlier phases (drawn with other
weights) beside the units assigned in it. A trend over time in a metric then biases the
naive difference of the pooled means (the treatment's share differs between cohorts; see
:mod:`abtest.stats.allocation`). When the phase holds more than one cohort, every mean and
ratio metric is compared per cohort and pooled by cohort size
(:func:`abtest.stats.allocation.stratified_test`), and the metric's ``estimator`` block says
so, with the cohorts' units. Not stratified, and said so in the block: quantile metrics, the
capped latency (``cap``: its log scan has no cohort) and metrics of a variant whose figures
are unavailable. CUPED is not applied to a stratified metric. The per-variant estimates, the
time series, the power plan and the segment breakdowns stay the pooled ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..stats.allocation import stratified_test
from ..stats.frequentist import Comparison
from . import cohort_queries as CQ
from . import queries as Q
from .catalogue import ratio_metrics
from .metrics import MetricSpec, cost_event_stats, mean_stats, ratio_stats
from .model import CohortUnits, EstimatorView

__all__ = ["STRATIFIED", "POOLED", "Cohorts", "collect", "stratified_comparison"]

STRATIFIED = "post-stratified by allocation cohort"
POOLED = "pooled, not adjusted for allocation cohorts"

# metric -> cohort (phase) -> variant -> MeanStats | RatioStats
Cohorts = dict[str, dict[int, dict[str, Any]]]


def collect(conn: Any, scope: Q.Scope, exp: Any, specs: Sequence[MetricSpec], keys: Sequence[str],
            capped: bool, unavailable: Mapping[str, Any]) -> tuple[Cohorts, dict[str, EstimatorView]]:
    """Per-cohort statistics of the metrics to stratify and every metric's estimator block;
    both empty unless ``exp`` is sticky and the phase holds units of more than one cohort."""
    if not getattr(exp, "sticky", False):
        return {}, {}
    exposed = CQ.cohort_exposures(conn, scope)
    phases = sorted({int(r["day"]) for r in exposed if r["units"]})
    if len(phases) < 2:
        return {}, {}
    exposed_units = _units(exposed, phases, keys)
    out: Cohorts = {}
    views: dict[str, EstimatorView] = {}
    unit_rows: list[dict[str, Any]] | None = None
    events: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    builtin_ratios = {m.name for m in ratio_metrics()}
    for s in specs:
        why = _not_stratified(s, capped, unavailable)
        if why is not None:
            views[s.name] = EstimatorView(POOLED, exposed_units, why)
            continue
        if s.kind == "cost_per_event":
            per = cost_event_stats(CQ.cohort_cost_event_rows(conn, scope, exp.key, s.event_name or s.name,
                                                             s.window_s))
        elif s.shape == "mean":
            source = (s.event_name or s.name, s.window_s)
            if source not in events:
                events[source] = CQ.cohort_event_rows(conn, scope, exp.key, *source, exposed)
            per = mean_stats(events[source][s.kind])
        elif s.name in builtin_ratios:
            unit_rows = CQ.cohort_unit_rows(conn, scope) if unit_rows is None else unit_rows
            per = ratio_stats(unit_rows, s.name)
        else:  # a metric shape without a per-cohort query
            views[s.name] = EstimatorView(POOLED, exposed_units, "no per-cohort query for this metric")
            continue
        # the metric's own cohorts (a unit with requests but no exposure row still has one)
        found = sorted({*phases, *(int(p) for by in per.values() for p in by)})
        by_cohort = {p: {v: per[v][p] for v in keys if p in per.get(v, {})} for p in found}
        out[s.name] = by_cohort
        views[s.name] = EstimatorView(STRATIFIED, tuple(
            CohortUnits(p, {v: int(by_cohort[p][v].n) if v in by_cohort[p] else 0 for v in keys}) for p in found))
    return out, views


def stratified_comparison(by_cohort: Mapping[int, Mapping[str, Any]], control: str, treatment: str,
                          alpha: float) -> Comparison:
    """The pooled comparison of one metric and treatment (cohorts in phase order)."""
    return stratified_test({str(p): by_cohort[p] for p in sorted(by_cohort)}, control, treatment, alpha).comparison


def _not_stratified(spec: MetricSpec, capped: bool, unavailable: Mapping[str, Any]) -> str | None:
    if spec.shape == "quantile":
        return "quantile metrics are compared over all units of the phase"
    if capped and spec.name == "latency_ms":
        return "the capped latency is computed from the request log, which has no cohort"
    if unavailable.get(spec.name):
        return "a variant's figures are unavailable"
    return None


def _units(exposed: Sequence[Mapping[str, Any]], phases: Sequence[int], keys: Sequence[str]) -> tuple[CohortUnits, ...]:
    counts = {(int(r["day"]), r["variant"]): int(r["units"]) for r in exposed}
    return tuple(CohortUnits(p, {v: counts.get((p, v), 0) for v in keys}) for p in phases)
