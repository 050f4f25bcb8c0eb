"""The report as one self-contained HTML page (inline CSS and SVG; no scripts, no CDN).

Reading order for a product team: the recommendation and its reasons, the SRM banner (only
when the split is off) and a guardrail-pause banner, the forest plot of every metric's
relative effect, the results table, latency distributions, the cumulative effect over time
with its sequential bounds, the shadow (dark-launch) summary, and the definitions.
Stable ids and classes (``#recommendation``, ``#srm-banner``, ``#forest-plot``,
``tr.metric-row[data-metric]`` ...) let tests and scripts find each part.
"""

from __future__ import annotations

from dataclasses import asdict
from html import escape
from typing import Any

from .model import ComparisonResult, MetricResult, Report
from .svg import forest_plot, histogram_plot, timeseries_plot

__all__ = ["render_html"]

_CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;color:#202124;margin:0;background:#f6f7f9}
main{max-width:980px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
.meta{color:#5f6368}.card{background:#fff;border:1px solid #dadce0;border-radius:8px;padding:16px;margin:12px 0}
.rec{border-left:8px solid #5f6368}.rec.ship{border-left-color:#1e8e3e}.rec.roll-back{border-left-color:#c5221f}
.rec.keep-running{border-left-color:#f9ab00}.rec .action{font-size:22px;font-weight:700;text-transform:uppercase}
.banner{border-radius:8px;padding:12px 16px;margin:12px 0;font-weight:600}
.banner.srm{background:#fce8e6;color:#a50e0e;border:1px solid #f5b7b1}
.banner.paused{background:#fef7e0;color:#7a4f01;border:1px solid #f6d67a}
.ok-line{color:#1e8e3e}
table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:6px 8px;border-bottom:1px solid #eceff1;text-align:right}
th:first-child,td:first-child,td.l,th.l{text-align:left}th{background:#f1f3f4;font-weight:600}
td.sig-good{color:#1e8e3e;font-weight:600}td.sig-bad{color:#c5221f;font-weight:600}
.err{color:#80868b;font-style:italic;text-align:left}
svg text{font:12px sans-serif;fill:#3c4043}svg .tick{font-size:11px;fill:#5f6368}svg .axis-title{font-size:12px}
svg .grid{stroke:#eceff1}svg .zero{stroke:#202124;stroke-width:1.2}svg .na{fill:#80868b;font-style:italic}
svg .legend{font-weight:600}dl{color:#3c4043}dt{font-weight:600;margin-top:6px}
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
    dates = f"started {e.started_at or '–'}" + (f", stopped {e.stopped_at}" if e.stopped_at else "")
    return (f'<header><h1 id="title">{escape(e.name)}</h1>'
            f'<div class="meta">experiment <code>{escape(e.key)}</code> · status <b id="status">'
            f'{escape(e.status)}</b> · phase {e.phase} · {escape(dates)} · generated '
            f'{escape(report.generated_at)}</div>'
            + (f'<p class="meta">{escape(e.hypothesis)}</p>' if e.hypothesis else "") + "</header>")


def _recommendation(report: Report) -> str:
    rec = report.recommendation
    cls = rec.action.replace(" ", "-")
    reasons = "".join(f"<li>{escape(r)}</li>" for r in rec.reasons)
    variant = f' <span class="meta">for <b>{escape(rec.variant)}</b></span>' if rec.variant else ""
    return (f'<section id="recommendation" class="card rec {cls}" data-action="{escape(rec.action)}">'
            f'<div>Recommendation{variant}</div><div class="action">{escape(rec.action)}</div>'
            f'<ul class="reasons">{reasons}</ul><div class="meta">Decided on always-valid (sequential) CIs of '
            f'the absolute difference, which has the sign of the relative lift; the relative CIs below also '
            f'carry the uncertainty of the control mean and can be wider.</div></section>')


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
    for m in report.metrics:
        for c in m.comparisons:
            rel, seq = c.relative, c.sequential.relative
            rows.append({
                "metric": m.name, "label": m.name + (f" ({c.variant})" if multi else ""),
                "estimate": rel and rel.estimate, "ci_lower": rel and rel.ci_lower,
                "ci_upper": rel and rel.ci_upper, "seq_lower": seq and seq.ci_lower,
                "seq_upper": seq and seq.ci_upper, "higher_is_better": m.higher_is_better,
                "significant": c.significant, "error": c.error or c.relative_error})
    return rows


def _metric_row(m: MetricResult, c: ComparisonResult, control: str) -> str:
    rel, seq = c.relative, c.sequential.relative
    estimate = rel.estimate if rel else None
    good = (estimate or 0) > 0 if m.higher_is_better else (estimate or 0) < 0
    cls = ("sig-good" if good else "sig-bad") if c.significant else ""
    cells = (f'<td class="l">{escape(m.name)}<div class="meta">{escape(m.role)}, '
             f'{escape(m.direction)} is better</div></td><td>{escape(c.variant)}</td>'
             f'<td>{_num(m.variants[control].estimate)}</td>'
             f'<td>{_num(m.variants[c.variant].estimate)}</td>')
    if c.error:
        return (f'<tr class="metric-row" data-metric="{escape(m.name)}">{cells}'
                f'<td colspan="6" class="err">{escape(c.error)}</td></tr>')
    return (f'<tr class="metric-row" data-metric="{escape(m.name)}">{cells}'
            f'<td class="{cls}">{_pct(estimate)}</td>'
            f'<td>[{_pct(rel and rel.ci_lower)}, {_pct(rel and rel.ci_upper)}]</td>'
            f'<td>[{_pct(seq and seq.ci_lower)}, {_pct(seq and seq.ci_upper)}]</td>'
            f'<td>{_p(c.p_value)} / {_p(c.adjusted_p_value)}</td>'
            f'<td>{_p(c.sequential.p_value)}</td>'
            f'<td>{_share(c.chance_to_win)}</td></tr>')


def _metric_rows(report: Report) -> str:
    control = report.control
    out = [_metric_row(m, c, control) for m in report.metrics for c in m.comparisons]
    head = ('<tr><th class="l">metric</th><th>variant</th><th>control</th><th>treatment</th><th>relative</th>'
            '<th>95% CI</th><th>sequential CI</th><th>p / Holm p</th><th>sequential p</th>'
            '<th>chance to win</th></tr>')
    return '<h2>Results</h2><table id="metrics-table">' + head + "".join(out) + "</table>"


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
            f'<dt>Data</dt><dd>Current phase and enrolled units only; shadow copies excluded; {cap}.</dd></dl>')


def render_html(report: Report) -> str:
    """The whole page as a string."""
    parts = [
        _header(report), _recommendation(report), _banners(report),
        '<h2>Effects</h2><div class="card">', forest_plot(_forest_rows(report)), "</div>",
        _metric_rows(report), _variants(report),
        '<h2>Latency distributions</h2><div class="card">', histogram_plot(_histogram_input(report)),
        "</div>", '<h2>Cumulative effect over time</h2><div class="card">',
        timeseries_plot(_timeseries_input(report)), "</div>", _shadow(report), _definitions(report),
    ]
    title = escape(f'{report.experiment.name} — abtest report')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style>'
            f'</head><body><main>{"".join(parts)}</main></body></html>')
