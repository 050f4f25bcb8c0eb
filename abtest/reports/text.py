"""The report as a console summary (``abtest report KEY --format text``), and the small text
helpers the HTML page shares with it: human times, values in their unit, counts.

    v2-int4 is non-inferior on conversion (margin 2 %: CI -1.1 % to +6.3 %), 79 % faster at p50: ship.

    exp-1 · V2 INT4 vs V1 FP32 · running · phase 1 · generated 2026-11-24 08:00 UTC
    decision policy: non-inferiority · alpha 0.05 · control: control

    conversion (primary, margin 2 %): control 22.94 % (conversions 25 / 109 units) · treatment ...
    ...

    SHIP treatment
      - <reason>

The headline first, then one line per metric (per variant: value and counts; per treatment: the
relative effect with its 95% CI and the interval the verdict used), then the verdict and its
reasons.
"""

from __future__ import annotations

from datetime import datetime, timezone

from .headline import decision_interval, format_interval, metric_unit, pct
from .model import Estimate, MetricResult, QuantileEstimateView, Report

__all__ = ["count_text", "human_time", "render_text", "value_text"]


def human_time(iso: str | None) -> str:
    """``2026-12-01T19:42:42.123+00:00`` -> ``2026-12-01 19:42 UTC`` ("–" for None)."""
    if not iso:
        return "–"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def value_text(metric: MetricResult, value: float | None) -> str:
    """A variant's value in the metric's unit: ``22.9 %``, ``312.4 ms``, ``20.1 tokens``."""
    if value is None:
        return "–"
    unit = metric_unit(metric)
    if unit == "share":
        return pct(value, 2)
    if unit in ("ms", "tokens", "tokens/s"):
        return f"{value:,.1f} {unit}"
    return f"{value:.4g}"


def count_text(estimate: Estimate | QuantileEstimateView | None) -> str:
    """``conversions 25 / 109 units`` for a rate, "" for other metrics."""
    count = getattr(estimate, "count", None)
    if count is None:
        return ""
    return f"{count.counted} {count.numerator:,} / {count.denominator:,} {count.of}"


def _variant_part(metric: MetricResult, variant: str) -> str:
    est = metric.variants.get(variant)
    if est is None:
        return f"{variant} –"
    count = count_text(est)
    return f"{variant} {value_text(metric, est.estimate)}" + (f" ({count})" if count else "")


def _metric_line(report: Report, metric: MetricResult) -> str:
    parts = [_variant_part(metric, v.variant) for v in report.variants if v.variant in metric.variants]
    for c in metric.comparisons:
        if c.error:
            parts.append(f"{c.variant} vs control: {c.error}")
            continue
        rel = c.relative
        text = f"{c.variant} vs control –"
        if rel is not None and rel.estimate is not None:
            text = f"{c.variant} vs control {pct(rel.estimate, 1, signed=True)} (95% CI {format_interval(rel, metric)})"
        interval = decision_interval(report, metric, c)
        if interval is not None:
            text += f", verdict interval ({interval.label}) {format_interval(interval, metric)}"
        parts.append(text)
    margin = f", margin {pct(metric.margin, 2)}" if metric.margin > 0 else ""
    return f"{metric.name} ({metric.role}{margin}): " + " · ".join(parts)


def render_text(report: Report) -> str:
    """The console summary: headline, experiment line, one line per metric, verdict and reasons."""
    e, o, rec = report.experiment, report.options, report.recommendation
    phase = o.phase or e.phase
    policy = "non-inferiority" if o.decision == "non_inferiority" else "superiority"
    lines = [report.headline, "",
             f"{e.key} · {e.name} · {e.status} · phase {phase}"
             + (f" (current: {e.phase})" if phase != e.phase else "")
             + f" · generated {human_time(report.generated_at)}",
             f"decision policy: {policy} · alpha {o.alpha:g} · control: {report.control}",
             "units: " + ", ".join(f"{v.variant} {v.units:,}" for v in report.variants)
             + f" · SRM: {_srm(report)}", ""]
    lines += [_metric_line(report, m) for m in report.metrics]
    lines += _quality_lines(report)
    lines += ["", f"{rec.action.upper()}" + (f" {rec.variant}" if rec.variant else "")]
    lines += [f"  - {r}" for r in rec.reasons]
    return "\n".join(lines) + "\n"


def _srm(report: Report) -> str:
    srm = report.srm
    if srm.p_value is None:
        return "not yet testable"
    return f"p = {srm.p_value:.3g}, " + ("MISMATCH: the split is off, see the report" if srm.flagged else "ok")


def _quality_lines(report: Report) -> list[str]:
    """One line per quality comparison: who scored whom, agreement and KL with their CIs."""
    q = report.quality
    if q is None:
        return []
    out = [""]
    for r in q.results:
        a, kl = r.agreement, r.kl
        what = "text similarity" if r.method == "text" else "top-1 agreement"
        line = f"quality ({r.comparison.replace('_', ' ')}): {r.scorer} scores {r.generator} for {r.variant}: "
        if a is None or a.estimate is None:
            line += "no estimate yet"
        else:
            line += (f"{what} {100 * a.estimate:.1f} % (95% CI {100 * (a.ci_lower or 0):.1f} % to "
                     f"{100 * (a.ci_upper or 0):.1f} %)")
        if kl is not None and kl.estimate is not None:
            line += f", mean KL {kl.estimate:.3g} (95% CI {kl.ci_lower or 0:.3g} to {kl.ci_upper or 0:.3g})"
        out.append(line + f" · {r.scored:,} scored requests, {r.units:,} units")
    out.append(f"quality jobs not scored: {q.skipped:,} failed, {q.dropped:,} dropped (queue full)")
    return out
