"""From query rows to per-variant statistics and comparisons, one metric at a time.

Three metric shapes, each turned into :mod:`abtest.stats` objects:

``ratio``     request-level metrics randomized by unit (``latency_ms``, ``error_rate``, the
              LLM and cost built-ins, ``cost_per_event``):
              :class:`~abtest.stats.RatioStats`, delta-method variance, Welch test.
``mean``      unit-level event metrics (``binary``/``count``/``sum``):
              :class:`~abtest.stats.MeanStats` over every exposed unit, Welch test.
``quantile``  ``latency_pXX_ms``, ``ttft_pXX_ms``: cluster-aware quantile CIs (Deng et al.
              2018) and a normal-approximation comparison.

A variant's statistic that cannot be computed for a reason the data cannot fix by itself (an
engine without a price) is :class:`Unavailable`: its estimate carries the reason, and so does
every comparison with it (:func:`compare`), never a zero.

Rows come per (variant, day); the totals are their sums, and the cumulative sums day by day
give the time series that the HTML report draws with its sequential bounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import stats as S
from .catalogue import BUILTIN_BY_NAME, RATIO_SOURCES, quantile_levels
from .model import ComparisonResult, EffectView, Estimate, ExpectedLoss, QuantileEstimateView, RatioEstimate
from .model import SequentialView, clean

__all__ = [
    "MetricSpec",
    "QUANTILE_LEVELS",
    "Unavailable",
    "unpriced",
    "compare",
    "left_out",
    "left_out_note",
    "ratio_stats",
    "cost_event_stats",
    "mean_stats",
    "by_day",
    "quantile_estimates",
    "indicator_stats",
    "total",
    "estimate_view",
    "effect_view",
    "comparison_view",
    "clean",
]

QUANTILE_LEVELS: dict[str, float] = quantile_levels()
# The (numerator, denominator) columns of queries.unit_rows per source of a built-in ratio metric.
_RATIO_COLUMNS = RATIO_SOURCES
# Per source, the unit_rows column counting the ok requests whose value is recorded (the others
# are left out of the metric; a cost is also missing, for a reason stated apart, when unpriced).
_RECORDED = {"ttft": "ttft_n", "tokens": "tokens_n", "decode": "dec_n", "truncation": "finish_n",
             "compute": "compute_n", "cost": "compute_n"}
_EMPTY_RATIO = S.RatioStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
_EMPTY_MEAN = S.MeanStats(0, 0.0, 0.0)


@dataclass(frozen=True)
class MetricSpec:
    """What the report needs to know about one metric (built-in or event metric)."""

    name: str
    shape: str  # ratio | mean | quantile
    kind: str  # builtin | binary | count | sum
    role: str  # primary | secondary | guardrail
    higher_is_better: bool
    margin: float
    event_name: str | None = None
    window_s: int = 86_400
    test: str | None = None  # None | "equivalence" (guardrails: two one-sided tests)

    @property
    def guardrail_margin(self) -> float | None:
        """Margin for :class:`abtest.stats.MetricEvidence`: 0 means "no tolerance", i.e. a
        breach is any confident harm and no non-inferiority proof is demanded (None)."""
        return self.margin if self.margin > 0 else None


@dataclass(frozen=True)
class Unavailable:
    """A variant's statistic that cannot be computed, and why (an :class:`abtest.stats.Failure`)."""

    reason: str
    n: int = 0
    requests: int = 0

    @property
    def mean(self) -> float:
        return math.nan

    @property
    def variance(self) -> float:
        return math.nan


def unpriced(engine: str) -> S.Failure:
    return S.Failure("unpriced_engine", f"engine {engine!r} has no price (cost_per_hour in the engine registry)")


def compare(control: Any, treatment: Any, alpha: float) -> S.Comparison:
    """Welch's test, or a comparison that failed with the reason of an :class:`Unavailable` side."""
    missing = next((x for x in (control, treatment) if isinstance(x, Unavailable)), None)
    if missing is None:
        return S.welch_test(control, treatment, alpha)
    return S.Comparison(None, None, control.n, treatment.n, alpha, None, None, error=missing.reason)


def left_out(rows: Iterable[Mapping[str, Any]], metric: str) -> int:
    """Ok requests a built-in metric leaves out: those whose value is not recorded (NULL)."""
    column = _RECORDED.get(BUILTIN_BY_NAME[metric].source)
    return 0 if column is None else int(sum(r["ok"] - r[column] for r in rows))


def left_out_note(n: int, metric: str) -> str | None:
    """The report's note for ``n`` left-out requests (None when there are none)."""
    if n <= 0:
        return None
    what = BUILTIN_BY_NAME[metric].recorded or "these values"
    return (f"{n} ok request{'s' if n != 1 else ''} logged before {what} were recorded "
            f"{'are' if n != 1 else 'is'} left out")


def ratio_stats(rows: Iterable[Mapping[str, Any]], metric: str) -> dict[str, dict[str, S.RatioStats]]:
    """Per variant and day, the RatioStats of a built-in ratio metric (``latency_ms``, ...)."""
    return _ratios(rows, *_RATIO_COLUMNS[BUILTIN_BY_NAME[metric].source])


def cost_event_stats(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, S.RatioStats]]:
    """Per variant and day, the RatioStats of a ``cost_per_event`` metric (queries.cost_event_rows)."""
    return _ratios(rows, "m", "d")


def _ratios(rows: Iterable[Mapping[str, Any]], num: str, den: str) -> dict[str, dict[str, S.RatioStats]]:
    out: dict[str, dict[str, S.RatioStats]] = {}
    for r in rows:
        out.setdefault(r["variant"], {})[r["day"]] = S.RatioStats(
            int(r["units"]), r[num], r[f"{num}_sq"], r[den], r[f"{den}_sq"],
            r[f"{num}_{den}"])
    return out


def mean_stats(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, S.MeanStats]]:
    """Per variant and day, the MeanStats of an event metric."""
    out: dict[str, dict[str, S.MeanStats]] = {}
    for r in rows:
        out.setdefault(r["variant"], {})[r["day"]] = S.MeanStats(
            int(r["units"]), r["sum"] or 0.0, max(r["sum_sq"] or 0.0, 0.0))
    return out


def total(days: Mapping[str, Any] | None, ratio: bool) -> Any:
    """Sum of a variant's daily statistics (an empty statistic when it has none)."""
    empty = _EMPTY_RATIO if ratio else _EMPTY_MEAN
    result = empty
    for value in (days or {}).values():
        result = result + value
    return result


def by_day(days: Mapping[str, Any] | None, all_days: Sequence[str], ratio: bool) -> list[Any]:
    """Cumulative statistics at the end of each day in ``all_days``."""
    running = _EMPTY_RATIO if ratio else _EMPTY_MEAN
    out = []
    for day in all_days:
        if days and day in days:
            running = running + days[day]
        out.append(running)
    return out


def quantile_estimates(points: Mapping[str, tuple[int, list[float]]],
                       indicators: Mapping[str, Mapping[str, Any]],
                       bounds: Mapping[str, Mapping[int, float]],
                       ranks: Mapping[str, list[S.QuantileRanks]],
                       variants: Sequence[str], alpha: float,
                       levels: Mapping[str, float] | None = None) -> dict[str, dict[str, S.QuantileEstimate]]:
    """Step 4 of the quantile recipe: metric name -> variant -> QuantileEstimate, for the
    quantile metrics ``levels`` (name -> level, one source; default all of latency)."""
    levels = quantile_levels("latency") if levels is None else levels
    out: dict[str, dict[str, S.QuantileEstimate]] = {name: {} for name in levels}
    for j, (name, level) in enumerate(levels.items()):
        for v in variants:
            ind = indicator_stats(indicators.get(v), j)
            if v not in points or v not in ranks:
                out[name][v] = S.quantile_estimate(level, math.nan, math.nan, math.nan, ind, alpha)
                continue
            rk = ranks[v][j]
            x_lo, x_hi = bounds[v].get(rk.rank_lower, math.nan), bounds[v].get(rk.rank_upper, math.nan)
            if not (math.isfinite(x_lo) and math.isfinite(x_hi)):
                x_lo = x_hi = points[v][1][j]
            out[name][v] = S.quantile_estimate(level, points[v][1][j], x_lo, x_hi, ind, alpha,
                                               n_requests=points[v][0])
    return out


def indicator_stats(row: Mapping[str, Any] | None, j: int) -> S.RatioStats:
    """The RatioStats of ``s_i`` (requests at or below x_hat) over ``d_i`` (requests); scaled to
    ``row["scale_to"]`` units when the row holds a sample of units."""
    if row is None:
        return _EMPTY_RATIO
    stats = S.RatioStats(row["units"], row["s"][j], row["s_sq"][j], row["d"], row["d_sq"], row["s_d"][j])
    return stats.scaled_to(row["scale_to"]) if row.get("scale_to") else stats


# --- report objects ----------------------------------------------------------------------

def estimate_view(stats: Any, alpha: float) -> Estimate | QuantileEstimateView:
    """A variant's estimate with its CI (t(n-1) for means/ratios, cluster-aware for quantiles)."""
    if isinstance(stats, Unavailable):
        return RatioEstimate(stats.n, None, None, None, None, stats.reason, requests=stats.requests)
    if isinstance(stats, S.QuantileEstimate):
        return QuantileEstimateView(stats.n_units, stats.n_requests, clean(stats.estimate), clean(stats.ci_lower),
                                    clean(stats.ci_upper), clean(stats.se), stats.error)
    est = S.variant_estimate(stats, alpha)
    values = (est.n, clean(est.mean), clean(est.ci_lower), clean(est.ci_upper), clean(est.se), est.error)
    if isinstance(stats, S.RatioStats):
        return RatioEstimate(*values, requests=int(stats.den_sum))
    return Estimate(*values)


def effect_view(effect: Any) -> EffectView | None:
    if effect is None:
        return None
    return EffectView(clean(effect.estimate), clean(effect.se), clean(effect.ci_lower), clean(effect.ci_upper),
                      clean(effect.p_value))


def comparison_view(variant: str, analysis: S.MetricAnalysis, adjusted_p_value: float | None,
                    alpha: float) -> ComparisonResult:
    """One treatment-vs-control comparison, with its Holm-adjusted p-value."""
    c, seq, bayes = analysis.comparison, analysis.sequential, analysis.bayesian
    return ComparisonResult(
        variant=variant, control_estimate=clean(c.control_mean), treatment_estimate=clean(c.treatment_mean),
        absolute=effect_view(c.absolute), relative=effect_view(c.relative),
        p_value=clean(c.absolute.p_value) if c.absolute else None,
        adjusted_p_value=adjusted_p_value,
        significant=adjusted_p_value is not None and adjusted_p_value < alpha,
        sequential=SequentialView(effect_view(seq.absolute), effect_view(seq.relative),
                                  clean(seq.absolute.p_value) if seq.absolute else None, seq.significant,
                                  seq.n_star),
        chance_to_win=clean(bayes.chance_to_win),
        expected_loss=ExpectedLoss(clean(bayes.loss_treatment), clean(bayes.loss_control), bayes.scale),
        error=c.error, relative_error=c.relative_error, error_code=S.failure_code(c.error),
    )
