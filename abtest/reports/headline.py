"""The report's headline: its answer in one sentence, in the product's words.

    v2-int4 is non-inferior on conversion (margin 2 %: CI -1.1 % to +6.3 %), 79 % faster at p50,
    81 % cheaper per request, 98.1 % top-1 agreement with its reference v2-fp32: ship.

Every number in it is one of the report's own fields, rounded for reading: the leading
treatment is ``recommendation.variant`` (named by its engine from ``variants``), then the
primary metric with the interval the verdict used (:func:`decision_interval`) and, under
non-inferiority, its margin; then, where the report has them for that treatment, the relative
change of ``latency_p50_ms`` and of ``cost_per_request`` (left out when it rounds to 0 %), the
top-1 agreement with its quality reference, and any breached guardrail; then the action (with
the units per variant so far and needed while it keeps running).

:func:`decision_interval` is also what the HTML table, the CSV and the text summary show as "the
interval the verdict used": for the primary metric the recommendation's ``basis`` (the evidence
the decision rules read), else the sequential relative CI under non-inferiority (the margin is
relative) and the sequential absolute CI under superiority; for a guardrail the sequential
relative CI when it has a margin, else the sequential absolute CI; none for other metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .catalogue import BUILTIN_BY_NAME
from .model import ComparisonResult, EffectView, MetricResult, Report, TreatmentRecommendation

__all__ = ["DecisionInterval", "build_headline", "decision_interval", "format_interval", "metric_unit",
           "with_headline", "pct"]

_P50, _COST = "latency_p50_ms", "cost_per_request"
_ACTION_WORDS = {"keep control": "keep the control"}


@dataclass(frozen=True)
class DecisionInterval:
    """The interval a verdict rests on: ``scale`` absolute or relative, ``kind`` always-valid
    (or exact, for two constant arms)."""

    scale: str
    lower: float
    upper: float
    kind: str = "always-valid"

    @property
    def label(self) -> str:
        return f"{self.kind}, {self.scale}"


def metric_unit(metric: MetricResult) -> str:
    """``share`` (rates: absolute effects read in points), ``ms``, or the catalogue's unit."""
    if metric.kind == "binary":
        return "share"
    builtin = BUILTIN_BY_NAME.get(metric.name)
    return builtin.unit if builtin is not None else ""


def _trim(x: float, digits: int, trim: bool = False) -> str:
    text = f"{x:.{digits}f}"
    if trim and "." in text:
        text = text.rstrip("0").rstrip(".")
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.0"


def pct(x: float, digits: int = 1, signed: bool = False, trim: bool = False) -> str:
    """A share as percent: 0.0213 -> "2.1 %" (signed: "+2.1 %"; trim: 0.02 -> "2 %", not "2.0 %")."""
    text = _trim(x * 100, digits, trim)
    if signed and not text.startswith("-") and text.strip("0.") != "":
        text = "+" + text
    return f"{text} %"


def _abs_value(x: float, unit: str) -> str:
    if unit == "share":
        text = _trim(x * 100, 1)
        suffix = " points"
    elif unit == "ms":
        text = _trim(x, 0 if abs(x) >= 10 else 1)
        suffix = " ms"
    else:
        text, suffix = f"{x:.3g}", ""
        if "e" in text:
            text = f"{x:.3e}"
    if not text.startswith("-") and text.strip("0.") != "":
        text = "+" + text
    return text + suffix


def format_interval(interval: DecisionInterval | EffectView | None, metric: MetricResult,
                    scale: str = "relative") -> str:
    """"-1.1 % to +6.3 %" (relative) or "+0.7 to +13.9 points" (absolute); "–" when undefined."""
    if isinstance(interval, DecisionInterval):
        scale, lower, upper = interval.scale, interval.lower, interval.upper
    elif interval is None or interval.ci_lower is None or interval.ci_upper is None:
        return "–"
    else:
        lower, upper = interval.ci_lower, interval.ci_upper
    if scale == "relative":
        return f"{pct(lower, signed=True)} to {pct(upper, signed=True)}"
    unit = metric_unit(metric)
    lo, hi = _abs_value(lower, unit), _abs_value(upper, unit)
    if unit in ("share", "ms"):  # the unit once, at the end
        lo = lo.rsplit(" ", 1)[0]
    return f"{lo} to {hi}"


def _decided_scale(report: Report, metric: MetricResult) -> str | None:
    if metric.role == "primary":
        return "relative" if report.options.decision == "non_inferiority" else "absolute"
    if metric.role == "guardrail":
        return "relative" if metric.margin > 0 else "absolute"
    return None


def decision_interval(report: Report, metric: MetricResult, comparison: ComparisonResult) -> DecisionInterval | None:
    """The sequential interval the verdict used for this metric and treatment (None: the metric
    takes no part in the verdict, or the interval is undefined)."""
    rec = report.treatment_recommendation(comparison.variant)
    basis = rec.basis
    if metric.role == "primary" and basis is not None and basis.metric == metric.name:
        if basis.lower is None or basis.upper is None:
            return None
        return DecisionInterval(basis.scale, basis.lower, basis.upper, basis.interval)
    scale = _decided_scale(report, metric)
    if scale is None:
        return None
    effect = getattr(comparison.sequential, scale)
    if effect is None or effect.ci_lower is None or effect.ci_upper is None:
        return None
    return DecisionInterval(scale, effect.ci_lower, effect.ci_upper)


def _find_metric(report: Report, name: str | None) -> MetricResult | None:
    return next((m for m in report.metrics if m.name == name), None)


def _comparison(metric: MetricResult | None, variant: str) -> ComparisonResult | None:
    if metric is None:
        return None
    return next((c for c in metric.comparisons if c.variant == variant and c.error is None), None)


def _who(report: Report, variant: str) -> str:
    summary = report.variant(variant)
    if summary is None:
        return variant
    shared = sum(v.engine == summary.engine for v in report.variants) > 1
    return f"{variant} ({summary.engine})" if shared else summary.engine


def _primary_clause(report: Report, rec: TreatmentRecommendation) -> str:
    metric = _find_metric(report, rec.primary_metric)
    if metric is None:
        return "has no primary metric to judge"
    comparison = next((c for c in metric.comparisons if c.variant == rec.variant), None)
    interval = decision_interval(report, metric, comparison) if comparison is not None else None
    if interval is None:
        return f"has no estimate on {metric.name} yet"
    lo, hi = interval.lower, interval.upper
    better_lo, better_hi = (lo, hi) if metric.higher_is_better else (-hi, -lo)
    ci = format_interval(interval, metric)
    basis = rec.basis
    decision = basis.decision if basis is not None else report.options.decision
    if decision == "non_inferiority":
        margin = basis.margin if basis is not None and basis.margin is not None else metric.margin
        where = f"{metric.name} (margin {pct(margin, 2, trim=True)}: CI {ci})"
        m = margin  # relative; on the absolute scale, a share of the control's value
        if interval.scale == "absolute":
            m *= abs(comparison.control_estimate or 0.0)  # type: ignore[union-attr]
        if better_lo > -m:
            return f"is non-inferior on {where}"
        if better_hi < -m:
            return f"is worse than the margin allows on {where}"
        return f"is not yet shown non-inferior on {where}"
    if better_lo > 0:
        return f"improves {metric.name} (CI {ci})"
    if better_hi < 0:
        return f"is worse on {metric.name} (CI {ci})"
    return f"shows no detectable effect on {metric.name} (CI {ci})"


def _relative_clause(report: Report, name: str, variant: str, down: str, up: str) -> str | None:
    comparison = _comparison(_find_metric(report, name), variant)
    if comparison is None or comparison.relative is None or comparison.relative.estimate is None:
        return None
    r = comparison.relative.estimate
    if pct(abs(r), 0) == "0 %":  # no change worth a word at this rounding
        return None
    return f"{pct(abs(r), 0)} {down if r < 0 else up}"


def _quality_clause(report: Report, variant: str) -> str | None:
    if report.quality is None:
        return None
    result = next((q for q in report.quality.results if q.comparison == "reference" and q.variant == variant
                   and q.agreement is not None and q.agreement.estimate is not None), None)
    if result is None or result.agreement is None or result.agreement.estimate is None:
        return None
    what = "top-1 agreement with" if result.method == "logprobs" else "text similarity to"
    return f"{pct(result.agreement.estimate, 1)} {what} its reference {result.scorer}"


def _guardrail_clause(rec: TreatmentRecommendation) -> str | None:
    breached = [g.metric for g in rec.guardrails if g.status == "breached"]
    if not breached:
        return None
    return f"guardrail breached on {', '.join(breached)}"


def _action_clause(report: Report, rec: TreatmentRecommendation | None, action: str) -> str:
    words = _ACTION_WORDS.get(action, action)
    power = rec.power if rec is not None else None
    if (action == "keep running" and power is not None and power.required_units_per_variant
            and power.current_units_per_variant is not None
            and power.current_units_per_variant < power.required_units_per_variant):
        words += (f" ({power.current_units_per_variant:,} of {power.required_units_per_variant:,} "
                  f"units per variant so far)")
    if report.srm.flagged:
        words = "the traffic split is off (sample ratio mismatch), " + words
    return words


def build_headline(report: Report) -> str:
    """One sentence: the leading treatment's result and the recommended action."""
    top = report.recommendation
    rec = report.treatment_recommendation(top.variant)
    if top.variant is None or rec is None:
        return f"No treatment to compare with the control: {_ACTION_WORDS.get(top.action, top.action)}."
    parts = [f"{_who(report, rec.variant)} {_primary_clause(report, rec)}"]
    parts += [c for c in (_relative_clause(report, _P50, rec.variant, "faster at p50", "slower at p50"),
                          _relative_clause(report, _COST, rec.variant, "cheaper per request",
                                           "more expensive per request"),
                          _quality_clause(report, rec.variant), _guardrail_clause(rec)) if c]
    return ", ".join(parts) + f": {_action_clause(report, rec, top.action)}."


def with_headline(report: Report) -> Report:
    """``report`` with its ``headline`` filled in from its own fields."""
    return replace(report, headline=build_headline(report))
