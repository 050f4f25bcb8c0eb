"""The report's deeper views: CUPED per event metric and the breakdown by segment.

CUPED (:func:`cuped_stats`): for each event metric (binary, count, sum) of an experiment with
CUPED on, the covariate is the same kind of the same event over the ``cuped_lookback_days``
before each unit's first exposure; units without history (no event at all in that window)
carry the pooled covariate mean of the units with history. For each built-in ratio metric
(``latency_ms``, ``error_rate``, ``ttft_ms``, ... the ratios of the catalogue) the covariate is
the same metric's numerator and denominator over the unit's requests in that window (from the
request log, before its first exposure; a unit has history when that denominator is > 0, e.g.
an ok request for ``latency_ms``), adjusted with the ratio recipe
(:class:`abtest.stats.CupedRatioStats`); quantile metrics stay unadjusted. A metric whose units
have no history at all is analysed unadjusted. Comparisons then use
:func:`abtest.stats.cuped_adjust` (pooled theta per control-treatment pair) and the metric's
``cuped`` block states theta and the variance reduction per treatment.

Segments (:func:`segment_sections`): for each declared dimension and level, every mean and ratio
metric is compared with the same Welch test as the whole report, its SRM checked against the
configured weights, the p-values of all segment comparisons adjusted together by
Benjamini-Hochberg, and per metric and treatment Cochran's Q tests whether the effect differs
between levels (interaction). Quantile metrics are not broken down.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from .. import stats as S
from . import breakdown_queries as BQ
from . import queries as Q
from .catalogue import RATIO_SOURCES, ratio_metrics
from .metrics import MetricSpec, compare, mean_stats, ratio_stats, total
from .model import CupedAdjustment, CupedView, Interaction, SegmentComparison, SegmentLevel, SegmentSection, clean

__all__ = ["CupedSums", "cuped_stats", "cuped_view", "segment_sections"]


CupedSums = dict[str, tuple[dict[str, Any], int]]  # metric -> (variant -> imputed sums, units with history)


def cuped_stats(conn: Any, scope: Q.Scope, exp: Any, specs: Sequence[MetricSpec],
                keys: Sequence[str], skip: Collection[str] = ()) -> CupedSums:
    """Metric -> (variant -> imputed CupedMeanStats or CupedRatioStats, units with history), for
    the event and built-in ratio metrics whose units have history, but those in ``skip`` (the
    caller's: unavailable ones, a capped latency); empty when the experiment has CUPED off."""
    if getattr(exp, "cuped", True) is False:
        return {}
    lookback = int(getattr(exp, "cuped_lookback_days", None) or 14) * 86_400
    out: CupedSums = _builtin_cuped(conn, scope, specs, keys, lookback, skip)
    cache: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for s in specs:
        if s.shape != "mean" or s.kind not in ("binary", "count", "sum"):
            continue
        source = (s.event_name or s.name, s.window_s)
        if source not in cache:
            cache[source] = BQ.covariate_rows(conn, scope, exp.key, *source, lookback)
        rows, k = cache[source], s.kind
        hist = {r["variant"]: S.CupedMeanStats(int(r["units"]), r[f"{k}_y"], r[f"{k}_y_sq"], r[f"{k}_x"],
                                               r[f"{k}_x_sq"], r[f"{k}_x_y"]) for r in rows if r["history"]}
        n_hist = sum(h.n for h in hist.values())
        if n_hist == 0:
            continue
        xbar = sum(h.pre_sum for h in hist.values()) / n_hist
        without = {r["variant"]: S.MeanStats(int(r["units"]), r[f"{k}_y"], max(r[f"{k}_y_sq"], 0.0))
                   for r in rows if not r["history"]}
        empty = S.CupedMeanStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        out[s.name] = ({v: S.impute_missing(hist.get(v, empty), without.get(v, S.MeanStats(0, 0.0, 0.0)), xbar)
                        for v in keys}, n_hist)
    return out


def _builtin_cuped(conn: Any, scope: Q.Scope, specs: Sequence[MetricSpec], keys: Sequence[str], lookback: int,
                   skip: Collection[str]) -> CupedSums:
    """The built-in ratio metrics' part of :func:`cuped_stats` (one query for all of them)."""
    names = {s.name for s in specs if s.kind == "builtin" and s.shape == "ratio" and s.name not in skip}
    if not names:
        return {}
    rows = BQ.builtin_covariate_rows(conn, scope, lookback)
    index = {source: i for i, source in enumerate(RATIO_SOURCES)}
    out: CupedSums = {}
    for m in ratio_metrics():
        if m.name not in names:
            continue
        i = index[m.source]
        hist, without = {}, {}
        for r in rows:
            g = {k: r[f"{k}{i}"] for k in BQ.BUILTIN_COVARIATE_SUMS}
            hist[r["variant"]] = S.CupedRatioStats(int(g["h"]), *(g[k] for k in BQ.BUILTIN_COVARIATE_SUMS[6:]))
            # the units without history: all units' post sums less those of the units with history
            without[r["variant"]] = S.RatioStats(
                int(r["units"] - g["h"]), g["m"] - g["h_m"], max(g["m_sq"] - g["h_m_sq"], 0.0), g["d"] - g["h_d"],
                max(g["d_sq"] - g["h_d_sq"], 0.0), g["m_d"] - g["h_m_d"])
        n_hist = sum(h.n for h in hist.values())
        if n_hist == 0:
            continue
        pooled = (sum(h.pre_num_sum for h in hist.values()) / n_hist, sum(h.pre_den_sum for h in hist.values()) / n_hist)
        empty_h, empty_w = S.CupedRatioStats(0, *([0.0] * 14)), S.RatioStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        out[m.name] = ({v: S.impute_missing(hist.get(v, empty_h), without.get(v, empty_w), pooled) for v in keys},
                       n_hist)
    return out


def cuped_view(exp: Any, stats: Mapping[str, Any], n_hist: int, control: str,
               treatments: Sequence[str]) -> CupedView:
    adjustments = []
    for t in treatments:
        ac, at = S.cuped_adjust(stats[control], stats[t])
        adjustments.append(CupedAdjustment(t, clean(ac.theta), clean(S.variance_reduction(ac, at))))
    return CupedView(int(getattr(exp, "cuped_lookback_days", None) or 14), n_hist,
                     sum(s.n for s in stats.values()), tuple(adjustments))


def segment_sections(conn: Any, scope: Q.Scope, exp: Any, specs: Sequence[MetricSpec], arms: Sequence[Any],
                     control: str, treatments: Sequence[str], alpha: float) -> tuple[SegmentSection, ...]:
    """One section per declared dimension (an empty tuple without dimensions)."""
    dims = list(getattr(exp, "dimensions", None) or [])
    if not dims:
        return ()
    keys = [control, *treatments]
    weights = [max(v.weight, 1e-12) for v in arms]
    raw: list[tuple[int, int, int, S.Comparison]] = []  # (dimension, level index, metric index, comparison)
    built = []
    for di, dim in enumerate(dims):
        attr = dim["attribute"]
        exposed = BQ.segment_exposures(conn, scope, attr)
        levels = [*dim["levels"], "other"]
        units = {(r["variant"], r["level"]): int(r["units"]) for r in exposed}
        stats = _segment_stats(conn, scope, exp.key, specs, attr)
        level_rows = []
        for li, level in enumerate(levels):
            counts = [units.get((k, level), 0) for k in keys]
            srm = S.srm_test(counts, weights) if len(arms) >= 2 else None
            comps = []
            for mi, s in enumerate(specs):
                if s.name not in stats:
                    continue
                for t in treatments:
                    c = compare(stats[s.name].get((control, level), _empty(s)),
                                stats[s.name].get((t, level), _empty(s)), alpha)
                    raw.append((di, li, mi, c))
                    comps.append((s.name, t, c))
            level_rows.append((level, counts, srm, comps))
        built.append((attr, level_rows, stats))
    p = [clean(c.absolute.p_value) if c.absolute else None for *_, c in raw]
    adjusted = S.adjust_p_values(p, method="bh", alpha=alpha).adjusted if raw else ()
    adj_of = {id(c): q for (*_, c), q in zip(raw, adjusted)}
    sections = []
    for di, (attr, level_rows, stats) in enumerate(built):
        levels_out = []
        for li, (level, counts, srm, comps) in enumerate(level_rows):
            views = []
            for name, t, c in comps:
                q = adj_of[id(c)]
                views.append(SegmentComparison(name, t, clean(c.control_mean), clean(c.treatment_mean),
                                               clean(c.absolute.estimate) if c.absolute else None,
                                               clean(c.absolute.ci_lower) if c.absolute else None,
                                               clean(c.absolute.ci_upper) if c.absolute else None,
                                               clean(c.relative.estimate) if c.relative else None,
                                               clean(c.absolute.p_value) if c.absolute else None,
                                               q, q is not None and q < alpha, c.error))
            levels_out.append(SegmentLevel(level, dict(zip(keys, counts)),
                                           clean(srm.p_value) if srm else None, bool(srm and srm.flagged),
                                           tuple(views)))
        interactions = []
        for s in specs:
            if s.name not in stats:
                continue
            for t in treatments:
                effects = [(c.absolute.estimate, c.absolute.se) if c.absolute else (None, None)
                           for _, _, _, comps in level_rows for name, tt, c in comps if name == s.name and tt == t]
                h = S.heterogeneity_test(effects)
                interactions.append(Interaction(s.name, t, clean(h.q), h.df, clean(h.p_value), h.error))
        sections.append(SegmentSection(attr, "bh", tuple(levels_out), tuple(interactions)))
    return tuple(sections)


def _empty(spec: MetricSpec) -> Any:
    return S.RatioStats(0, 0.0, 0.0, 0.0, 0.0, 0.0) if spec.shape == "ratio" else S.MeanStats(0, 0.0, 0.0)


def _segment_stats(conn: Any, scope: Q.Scope, key: str, specs: Sequence[MetricSpec],
                   attr: str) -> dict[str, dict[tuple[str, str], Any]]:
    """Metric -> (variant, level) -> its statistic (ratio built-ins and event mean metrics)."""
    out: dict[str, dict[tuple[str, str], Any]] = {}
    names = {s.name for s in specs}
    builtin = {m.name for m in ratio_metrics()} & names
    if builtin:
        rows = BQ.segment_unit_rows(conn, scope, attr)
        for name in builtin:
            per = ratio_stats(rows, name)
            out[name] = {(v, level): st for v, by in per.items() for level, st in by.items()}
    events: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    for s in specs:
        if s.shape != "mean":
            continue
        source = (s.event_name or s.name, s.window_s)
        if source not in events:
            events[source] = BQ.segment_event_rows(conn, scope, key, *source, attr)
        per = mean_stats(events[source][s.kind])
        out[s.name] = {(v, level): total({level: st}, False) for v, by in per.items() for level, st in by.items()}
    return out
