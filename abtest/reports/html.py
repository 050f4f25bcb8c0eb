"""The report as one self-contained HTML page (inline CSS and SVG; no scripts, no CDN).

Reading order for a product team: the headline (the answer in one sentence), the
recommendation and its reasons, the SRM banner (only
when the split is off) and a guardrail-pause banner, the forest plot of every metric's
relative effect, the results table (values with their counts, the fixed-horizon CI, and the
always-valid interval the verdict used, labelled absolute or relative), latency distributions, the cumulative effect over time
with its sequential bounds, the shadow (dark-launch) summary, output quality, and the definitions.
Times read "2026-12-01 19:42 UTC" (the JSON keeps ISO 8601).
Stable ids and classes (``#headline``, ``#recommendation``, ``#srm-banner``, ``#forest-plot``,
``tr.metric-row[data-metric]`` ...) let tests and scripts find each part.
"""

from __future__ import annotations

from dataclasses import asdict
from html import escape
from typing import Any

from .headline import decision_interval, format_interval
from .model import ComparisonResult, Estimate, MetricResult, Report
from .svg import forest_plot, histogram_plot, timeseries_plot, variant_colors
from .text import count_text, human_time, value_text

__all__ = ["render_html", "render_sections", "REPORT_CSS"]

REPORT_CSS = _CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;color:#202124;margin:0;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
.meta{color:#5f6368}.card{background:#fff;border:1px solid #dadce0;border-radius:8px;padding:16px;margin:12px 0}
.rec{border-left:8px solid #5f6368}.rec.ship{border-left-color:#1e8e3e}.rec.roll-back{border-left-color:#c5221f}
.rec.keep-running{border-left-color:#f9ab00}.rec.keep-control{border-left-color:#1f5fa8}
.headline{font-size:17px;font-weight:600;margin:0 0 10px}.rec .action{font-size:22px;font-weight:700;text-transform:uppercase}
.banner{border-radius:8px;padding:12px 16px;margin:12px 0;font-weight:600}
.banner.srm{background:#fce8e6;color:#a50e0e;border:1px solid #f5b7b1}
.banner.paused{background:#fef7e0;color:#7a4f01;border:1px solid #f6d67a}
.ok-line{color:#1e8e3e}
table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:6px 8px;border-bottom:1px solid #eceff1;text-align:right}
th:first-child,td:first-child,td.l,th.l{text-align:left}th{background:#f1f3f4;font-weight:600}
td.sig-good{color:#1e8e3e;font-weight:600}td.sig-bad{color:#c5221f;font-weight:600}
.err{color:#80868b;font-style:italic;text-align:left}
td .meta{font-size:12px}td.verdict{background:#f8fafd}th.verdict{background:#e8f0fe}#metrics-table{font-size:13px}#metrics-table td:first-child{min-width:190px}#metrics-table td.ci,#metrics-table .count{white-space:nowrap}.scroll{overflow-x:auto}
svg text{font:12px sans-serif;fill:#3c4043}svg .tick{font-size:11px;fill:#5f6368}svg .axis-title{font-size:12px}
svg .grid{stroke:#eceff1}svg .zero{stroke:#202124;stroke-width:1.2}svg .na{fill:#80868b;font-style:italic}
svg .legend-label{font-size:12px}dl{color:#3c4043}dt{font-weight:600;margin-top:6px}
"""




def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2%}"


def _num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 1e6 else f"{x:.3e}"


def _p(x: float | None) -> str:
    return "–" if x is None else ("<0.0001" if x < 1e-4 else f"{x:.4f}")


def _share(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _header(report: Report) -> str:
    e = report.experiment
    dates = f"started {human_time(e.started_at)}" + (f", stopped {human_time(e.stopped_at)}" if e.stopped_at else "")
    shown = report.options.phase or e.phase
    phase = f"phase {shown}" + (f" (an earlier phase; the current one is {e.phase})" if shown != e.phase else "")
    return (f'<header><h1 id="title">{escape(e.name)}</h1>'
            f'<div class="meta">experiment <code>{escape(e.key)}</code> · status <b id="status">'
            f'{escape(e.status)}</b> · <span id="phase">{escape(phase)}</span> · {escape(dates)} · generated '
            f'{escape(human_time(report.generated_at))}</div>'
            + (f'<p class="meta">{escape(e.hypothesis)}</p>' if e.hypothesis else "") + "</header>")


def _recommendation(report: Report) -> str:
    rec = report.recommendation
    cls = rec.action.replace(" ", "-")
    reasons = "".join(f"<li>{escape(r)}</li>" for r in rec.reasons)
    variant = f' <span class="meta">for <b>{escape(rec.variant)}</b></span>' if rec.variant else ""
    policy = "non-inferiority" if report.options.decision == "non_inferiority" else "superiority"
    return (f'<section id="recommendation" class="card rec {cls}" data-action="{escape(rec.action)}">'
            f'<p id="headline" class="headline">{escape(report.headline)}</p>'
            f'<div>Recommendation{variant}</div><div class="action">{escape(rec.action)}</div>'
            f'<ul class="reasons">{reasons}</ul><div class="meta">Decision policy: {policy}. Decided on '
            f'always-valid (sequential) intervals, valid however often this page is read: the column '
            f'"interval the verdict used" of the results table shows each one, absolute or relative as '
            f'the verdict read it.</div></section>')


def _banners(report: Report) -> str:
    srm, e, out = report.srm, report.experiment, []
    if srm.flagged:
        counts = ", ".join(f'{escape(v.variant)}: {v.units} (expected {v.expected:.0f})' for v in srm.variants)
        out.append(f'<div id="srm-banner" class="banner srm" role="alert">Sample ratio mismatch '
                   f'(p = {srm.p_value:.2g}): {counts}. Do not trust the results until the cause is '
                   f'found; shipping is blocked.</div>')
    else:
        out.append(f'<p id="srm-ok" class="ok-line">✓ {escape(srm.message)}</p>')
    if e.treatment_paused:
        breach = e.last_guardrail_breach
        reason = breach.reason if breach is not None and breach.reason is not None else "see the audit log"
        out.append(f'<div id="guardrail-banner" class="banner paused" role="alert">Treatment paused by a '
                   f'guardrail: {escape(str(reason))}</div>')
    return "".join(out)


def _variants(report: Report) -> str:
    rows = "".join(
        f'<tr><td>{escape(v.variant)}{" (control)" if v.control else ""}</td><td class="l">'
        f'{escape(v.engine)}</td><td>{v.weight:.0%}</td><td>{v.units}</td><td>{v.requests}</td>'
        f'<td>{v.rejected}</td><td>{v.unavailable}</td></tr>' for v in report.variants)
    return ('<h2>Variants</h2><table id="variants-table"><tr><th>variant</th><th class="l">engine</th>'
            '<th>weight</th><th>units</th><th>requests</th><th>rejected</th>'
            '<th title="failed for the infrastructure (broker, engine loading): not in error_rate">'
            'unavailable</th></tr>' + rows + "</table>")


def _forest_rows(report: Report) -> list[dict[str, Any]]:
    """The forest plot's rows (the input format of :func:`abtest.reports.svg.forest_plot`)."""
    rows = []
    multi = len(report.variants) > 2
    order = {"primary": 0, "guardrail": 1, "secondary": 2}  # what the verdict rests on comes first
    for m in sorted(report.metrics, key=lambda m: order.get(m.role, 3)):
        for c in m.comparisons:
            rel, seq = c.relative, c.sequential.relative
            rows.append({
                "metric": m.name, "label": m.name + (f" ({c.variant})" if multi else ""),
                "estimate": rel and rel.estimate, "ci_lower": rel and rel.ci_lower,
                "ci_upper": rel and rel.ci_upper, "seq_lower": seq and seq.ci_lower,
                "seq_upper": seq and seq.ci_upper, "higher_is_better": m.higher_is_better,
                "significant": c.significant, "error": c.error or c.relative_error})
    return rows


def _value_cell(m: MetricResult, variant: str) -> str:
    est = m.variants.get(variant)
    if est is None:
        return "<td>–</td>"
    count = count_text(est)
    return (f'<td>{escape(value_text(m, est.estimate))}'
            + (f'<div class="meta count">{escape(count)}</div>' if count else "") + "</td>")


def _status(report: Report, m: MetricResult, variant: str) -> str | None:
    rec = report.treatment_recommendation(variant)
    if rec is None:
        return None
    if m.role == "primary" and rec.primary_metric == m.name:
        return rec.primary_status
    return next((g.status for g in rec.guardrails if g.metric == m.name), None)


def _verdict_cell(report: Report, m: MetricResult, c: ComparisonResult) -> str:
    interval = decision_interval(report, m, c)
    status = _status(report, m, c.variant)
    if interval is None:
        text = "not in the verdict" if m.role == "secondary" else "undefined"
        return f'<td class="verdict meta">{text}</td>'
    return (f'<td class="verdict ci" data-scale="{interval.scale}">{escape(format_interval(interval, m))}'
            f'<div class="meta">{escape(interval.label)}'
            + (f' · <b>{escape(status.replace("_", "-"))}</b>' if status else "") + '</div></td>')


def _metric_row(report: Report, m: MetricResult, c: ComparisonResult) -> str:
    rel, seq = c.relative, c.sequential.relative
    estimate = rel.estimate if rel else None
    good = (estimate or 0) > 0 if m.higher_is_better else (estimate or 0) < 0
    cls = ("sig-good" if good else "sig-bad") if c.significant else ""
    margin = f", margin {m.margin:.0%}" if m.margin > 0 else ""
    cells = (f'<td class="l">{escape(m.name)}<div class="meta">{escape(m.role)}, '
             f'{escape(m.direction)} is better{margin}</div>'
             + (f'<div class="meta">{escape(m.note)}</div>' if m.note else "")
             + (f'<div class="meta estimator">{escape(_estimator(m.estimator))}</div>' if m.estimator else "")
             + f'</td><td>{escape(c.variant)}</td>'
             f'{_value_cell(m, report.control)}{_value_cell(m, c.variant)}')
    if c.error:
        return (f'<tr class="metric-row" data-metric="{escape(m.name)}">{cells}'
                f'<td colspan="7" class="err">{escape(c.error)}</td></tr>')
    return (f'<tr class="metric-row" data-metric="{escape(m.name)}">{cells}'
            f'<td class="{cls}">{_pct(estimate)}</td>'
            f'<td class="ci">{_pct(rel and rel.ci_lower)} to {_pct(rel and rel.ci_upper)}</td>'
            f'<td class="ci">{_pct(seq and seq.ci_lower)} to {_pct(seq and seq.ci_upper)}</td>'
            f'{_verdict_cell(report, m, c)}'
            f'<td>{_p(c.p_value)} / {_p(c.adjusted_p_value)}</td>'
            f'<td>{_p(c.sequential.p_value)}</td>'
            f'<td>{_share(c.chance_to_win)}</td></tr>')


def _metric_rows(report: Report) -> str:
    out = [_metric_row(report, m, c) for m in report.metrics for c in m.comparisons]
    head = ('<tr><th class="l">metric</th><th>variant</th><th>control</th><th>treatment</th><th>relative</th>'
            '<th title="fixed-horizon, relative">95% CI</th>'
            '<th title="always-valid (sequential), relative">always-valid CI</th>'
            '<th class="verdict" title="the always-valid interval the recommendation read, absolute or '
            'relative">interval the verdict used</th><th>p / Holm p</th><th>always-valid p</th>'
            '<th>chance to win</th></tr>')
    return ('<h2>Results</h2><div class="scroll"><table id="metrics-table">' + head + "".join(out)
            + "</table></div>")


def _shadow(report: Report) -> str:
    if not report.shadow:
        return ""
    rows = "".join(
        f'<tr><td>{escape(s.variant)}</td><td>{int(s.requests)}</td><td>{_num(s.latency_mean_ms)}</td>'
        f'<td>{s.errors / max(s.requests, 1):.2%}</td><td>'
        f'{_share(s.output_matches / s.compared if s.compared else None)}</td></tr>'
        for s in report.shadow)
    return ('<h2>Shadow traffic (dark launch, not in the metrics)</h2><table id="shadow-table"><tr>'
            '<th>variant</th><th>requests</th><th>mean latency (ms)</th><th>error rate</th>'
            '<th>output match</th></tr>' + rows + "</table>")


def _with_ci(e: Estimate | None) -> str:
    if e is None or e.estimate is None:
        return "–"
    return f"{e.estimate:.3g} ({_num(e.ci_lower, 3)} to {_num(e.ci_upper, 3)})"


def _quality(report: Report) -> str:
    q = report.quality
    if q is None or not q.results:
        return ""
    rows = "".join(
        f'<tr><td class="l">{escape(r.comparison.replace("_", " "))}</td><td>{escape(r.variant)}</td>'
        f'<td class="l">{escape(r.scorer)} scores {escape(r.generator)}</td><td>{escape(r.method)}</td>'
        f'<td>{_with_ci(r.agreement)}</td><td>{_with_ci(r.kl)}</td><td>{r.scored}</td><td>{r.units}</td></tr>'
        for r in q.results)
    sample = f"sample {q.sample:.0%} of requests · " if q.sample else ""
    return ('<h2>Output quality on live traffic</h2><table id="quality-table"><tr><th class="l">comparison</th>'
            '<th>variant</th><th class="l">engines</th><th>method</th><th>agreement (95% CI)</th>'
            '<th>mean KL (95% CI)</th><th>scored</th><th>units</th></tr>' + rows + '</table>'
            f'<p class="meta">{escape(sample)}{q.skipped} scoring jobs skipped, {q.dropped} dropped. '
            f'{escape(q.note)}</p>')


def _estimator(e: Any) -> str:
    """One line: how a metric of a phase holding several allocation cohorts was compared."""
    cohorts = ", ".join(f"phase {c.phase}: {sum(c.units.values()):,} units" for c in e.cohorts)
    return f"{e.estimator} ({cohorts})" + (f"; {e.note}" if e.note else "")


def _cuped(report: Report) -> str:
    rows = "".join(
        f'<tr><td class="l">{escape(m.name)}</td><td>{escape(a.variant)}</td><td>{m.cuped.lookback_days} days</td>'
        f'<td>{m.cuped.units_with_history} of {m.cuped.units}</td><td>{_num(a.theta, 3)}</td>'
        f'<td>{_pct(a.variance_reduction)}</td></tr>'
        for m in report.metrics if m.cuped is not None for a in m.cuped.adjustments)
    if not rows:
        return ""
    return ('<h2>Variance reduction (CUPED)</h2><table id="cuped-table"><tr><th class="l">metric</th><th>variant</th>'
            '<th>lookback</th><th>units with history</th><th>theta</th><th>variance reduction</th></tr>'
            + rows + '</table>')


_BAD, _GOOD = ' style="color:#c5221f;font-weight:600"', ' style="color:#137333;font-weight:600"'


def _segments(report: Report) -> str:
    out = []
    for sec in report.segments or ():
        rows = "".join(
            f'<tr><td class="l">{escape(lv.level)}</td><td>{" / ".join(str(n) for n in lv.units.values())}</td>'
            f'<td{_BAD if lv.srm_flagged else ""}>{_p(lv.srm_p_value)}</td>'
            f'<td class="l">{escape(c.metric)}</td><td>{escape(c.variant)}</td>'
            f'<td>{_num(c.control_estimate, 4)} → {_num(c.treatment_estimate, 4)}</td>'
            f'<td>{_num(c.absolute, 3)} ({_num(c.ci_lower, 3)} to {_num(c.ci_upper, 3)})</td>'
            f'<td>{_pct(c.relative)}</td><td>{_p(c.p_value)}</td>'
            f'<td{_GOOD if c.significant else ""}>{_p(c.adjusted_p_value)}</td></tr>'
            for lv in sec.levels for c in lv.comparisons if c.error is None)
        inter = "; ".join(f"{escape(i.metric)} ({escape(i.variant)}): Q = {_num(i.q, 3)}, df {i.df}, p {_p(i.p_value)}"
                          for i in sec.interactions if i.q is not None)
        out.append(f'<h2>Segments by {escape(sec.dimension)}</h2><table class="segment-table" id="segments-'
                   f'{escape(sec.dimension)}"><tr><th class="l">level</th><th>units (variants)</th><th>SRM p</th>'
                   '<th class="l">metric</th><th>variant</th><th>control → treatment</th>'
                   '<th>difference (95% CI)</th><th>relative</th><th>p</th><th>BH-adjusted p</th></tr>'
                   + rows + f'</table><p class="meta">Benjamini-Hochberg across every segment comparison. '
                   f'Interaction (does the effect differ between levels?): {inter or "not testable"}.</p>')
    return "".join(out)


def _histogram_input(report: Report) -> dict[str, Any] | None:
    h = report.latency_histogram
    if h is None:
        return None
    return {"bin_width_ms": h.bin_width_ms, "upper_ms": h.upper_ms, "counts": {v: list(c) for v, c in h.counts.items()}}


def _timeseries_input(report: Report) -> dict[str, Any] | None:
    ts = report.timeseries
    if ts is None:
        return None
    return {"metric": ts.metric, "series": {v: [asdict(p) for p in pts] for v, pts in ts.series.items()}}


def _definitions(report: Report) -> str:
    o = report.options
    cap = (f"latency winsorized at the pooled {o.cap:g} quantile ({_num(o.cap_value_ms)} ms)" if o.cap
           else "no latency capping")
    return (f'<h2>How to read this</h2><dl class="card"><dt>Unit of analysis</dt><dd>Users (units) are '
            f'randomized; latency and error rate are ratio metrics per unit with delta-method variance, '
            f'quantiles use cluster-aware CIs; event metrics count every exposed unit.</dd>'
            f'<dt>Confidence</dt><dd>95% CIs (alpha {o.alpha:g}); p-values are Holm-adjusted across all '
            f'{o.multiple_testing.family} comparisons. Sequential CIs stay valid however often this '
            f'page is checked (N* = {o.n_star:g}); the recommendation uses them.</dd>'
            f'<dt>Data</dt><dd>Phase {o.phase or report.experiment.phase} and enrolled units only; shadow '
            f'copies excluded; {cap}.</dd>'
            f'<dt>Counts</dt><dd>Rates show their integers: conversions of exposed units, errors of '
            f'requests, truncated completions of ok requests.</dd></dl>')


def render_sections(report: Report) -> str:
    """The page's sections without the document around them (the web console embeds them,
    styled by :data:`REPORT_CSS`)."""
    colors = variant_colors([v.variant for v in report.variants])
    parts = [
        _header(report), _recommendation(report), _banners(report),
        '<h2>Effects</h2><div class="card">', forest_plot(_forest_rows(report)), "</div>",
        _metric_rows(report), _variants(report),
        '<h2>Latency distributions</h2><div class="card">', histogram_plot(_histogram_input(report), colors=colors),
        "</div>", '<h2>Cumulative effect over time</h2><div class="card">',
        timeseries_plot(_timeseries_input(report), colors=colors), "</div>", _shadow(report), _quality(report),
        _cuped(report), _segments(report), _definitions(report),
    ]
    return "".join(parts)


def render_html(report: Report) -> str:
    """The whole page as a string."""
    title = escape(f'{report.experiment.name} — abtest report')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style>'
            f'</head><body><main>{render_sections(report)}</main></body></html>')
