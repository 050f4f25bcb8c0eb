"""The layer's cumulative impact report (:mod:`abtest.reports.holdout`) as one HTML page, in
the experiment report's styles (inline CSS, no scripts). Stable ids: ``#title``,
``#units``, ``#holdout-split``, ``#metrics-table`` with ``tr.metric-row[data-metric]``."""

from __future__ import annotations

from html import escape
from typing import Any

from .html import REPORT_CSS

__all__ = ["render_layer_html"]


def _num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 1e6 else f"{x:.3e}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2%}"


def _p(x: float | None) -> str:
    return "–" if x is None else ("<0.0001" if x < 1e-4 else f"{x:.4f}")


def _row(m: dict[str, Any], alpha: float) -> str:
    name = escape(m["name"])
    head = (f'<td class="l">{name}<div class="meta">{escape(m["kind"])}'
            + (f' of <code>{escape(m["event"])}</code>' if m["event"] else "")
            + f', {escape(m["direction"])} is better</div></td>'
            f'<td>{_num(m["holdout"]["mean"])}<div class="meta count">{m["holdout"]["units"]} units</div></td>'
            f'<td>{_num(m["exposed"]["mean"])}<div class="meta count">{m["exposed"]["units"]} units</div></td>')
    d, r = m["difference"], m["relative_lift"]
    if d is None:
        return f'<tr class="metric-row" data-metric="{name}">{head}<td colspan="4" class="err">{escape(m["error"] or "")}</td></tr>'
    cls = ""
    if d["p_value"] < alpha:
        good = d["estimate"] > 0 if m["direction"] == "increase" else d["estimate"] < 0
        cls = "sig-good" if good else "sig-bad"
    rel = (f'<td class="{cls}">{_pct(r["estimate"])}</td><td class="ci">{_pct(r["ci_lower"])} to {_pct(r["ci_upper"])}</td>'
           if r is not None else f'<td colspan="2" class="err">{escape(m["relative_error"] or "")}</td>')
    return (f'<tr class="metric-row" data-metric="{name}">{head}'
            f'<td class="ci">{_num(d["estimate"])} ({_num(d["ci_lower"])} to {_num(d["ci_upper"])})</td>'
            f'{rel}<td>{_p(d["p_value"])}</td></tr>')


def render_layer_html(report: dict[str, Any]) -> str:
    layer, units, split = report["layer"], report["units"], report["holdout_split"]
    experiments = ", ".join(f'{e["key"]} ({e["status"]})' for e in report["experiments"]) or "none started"
    parts = [
        f'<header><h1 id="title">Layer {escape(layer)}: cumulative impact</h1>'
        f'<div class="meta">holdout share <b id="holdout">{report["holdout"]:.1%}</b> · experiments '
        f'{escape(experiments)}</div></header>',
        f'<div class="card" id="units">Holdout (control everywhere): <b>{units["holdout"]}</b> units · exposed '
        f'to the layer\'s experiments: <b>{units["exposed"]}</b> units'
        + (f' · in both, left out: {units["both"]}' if units["both"] else "") + "</div>",
    ]
    if split is not None:
        cls = "banner srm" if split["flagged"] else "card ok-line"
        parts.append(f'<div class="{cls}" id="holdout-split">{escape(split["message"])}</div>')
    head = ('<tr><th class="l">metric</th><th>holdout</th><th>exposed</th><th>difference (CI)</th>'
            '<th>relative lift</th><th>relative CI</th><th>p-value</th></tr>')
    rows = "".join(_row(m, report["alpha"]) for m in report["metrics"])
    parts.append(f'<h2>Exposed vs holdout</h2><div class="card scroll"><table id="metrics-table">{head}{rows}'
                 '</table></div>')
    parts.append(f'<h2>Method</h2><div class="card"><p>{escape(report["method"])}; '
                 f'{1 - report["alpha"]:.0%} confidence intervals.</p></div>')
    title = escape(f"{layer} — abtest layer report")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{REPORT_CSS}</style>'
            f'</head><body><main>{"".join(parts)}</main></body></html>')
