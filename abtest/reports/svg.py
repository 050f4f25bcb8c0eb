"""Tiny inline-SVG charts for the HTML report (no JavaScript, no external assets).

Each function returns one ``<svg>`` element as a string; every text is escaped. Scales are
linear; the caller passes data already in the unit it wants shown. Every chart carries its
legend, drawn as coloured swatches (``rect.swatch``/``line.swatch``, never coloured text, which a
page's CSS may override), and a variant has the same colour on every chart: pass the mapping of
:func:`variant_colors` (the report's variant order, control first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["forest_plot", "histogram_plot", "timeseries_plot", "variant_colors", "PALETTE"]

PALETTE = ("#1f5fa8", "#d9642b", "#2a9d5b", "#8e44ad", "#b8860b", "#c0392b")
_GOOD, _BAD, _NEUTRAL = "#1e8e3e", "#c5221f", "#5f6368"


def variant_colors(variants: Sequence[str]) -> dict[str, str]:
    """One colour per variant, by its position in the report (control first)."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}


def _legend(items: Sequence[tuple[str, str, str]], x: float, y: float, step: float = 150) -> str:
    """A row of legend entries from ``x``: (label, colour, kind) with kind ``box`` (a filled
    square), ``line`` (a thick line) or ``dash`` (a thin dashed line)."""
    out = ['<g class="legend">']
    for i, (label, color, kind) in enumerate(items):
        x0 = x + i * step
        if kind == "box":
            out.append(f'<rect class="swatch" x="{x0:.1f}" y="{y - 9:.1f}" width="12" height="12" rx="2" '
                       f'fill="{color}"/>')
        else:
            extra = ' stroke-dasharray="4 3" stroke-width="1.5"' if kind == "dash" else ' stroke-width="5"'
            out.append(f'<line class="swatch" x1="{x0:.1f}" x2="{x0 + 14:.1f}" y1="{y - 3:.1f}" y2="{y - 3:.1f}" '
                       f'stroke="{color}"{extra}/>')
        out.append(f'<text x="{x0 + 18:.1f}" y="{y + 1:.1f}" class="legend-label">{escape(label)}</text>')
    return "".join(out) + "</g>"


class _Scale:
    """Maps a data interval onto a pixel interval."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float) -> None:
        if not hi > lo:
            lo, hi = lo - 1.0, hi + 1.0
        self.lo, self.hi, self.p0, self.p1 = lo, hi, p0, p1

    def __call__(self, x: float) -> float:
        return self.p0 + (x - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)


def _fmt_pct(x: float) -> str:
    return f"{x:+.1%}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if not span > 0:
        return [lo]
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 5, 10):
        if span / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _svg(width: int, height: int, body: Sequence[str], ident: str, title: str) -> str:
    return (f'<svg id="{ident}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="100%" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
            + "".join(body) + "</svg>")


_CLIP = 1.0  # the forest plot's axis ends at +/-100 %


def forest_plot(rows: Sequence[dict[str, Any]], width: int = 860) -> str:
    """Relative effects with fixed (thick) and sequential (thin) CIs, one line per row.

    Each row: ``label``, ``estimate``, ``ci_lower``/``ci_upper``, ``seq_lower``/``seq_upper``,
    ``higher_is_better``, ``significant``; rows without an estimate show their ``error``.
    """
    row_h, top, left, right = 30, 34, 250, 30
    height = top + row_h * max(len(rows), 1) + 54
    vals = [0.0] + [x for r in rows for x in (r.get("seq_lower"), r.get("seq_upper"),
                                              r.get("ci_lower"), r.get("ci_upper")) if x is not None]
    # The axis stops at -100 % and +100 %: one huge effect (a decode rate x5) must not squash
    # every other interval; what lies beyond is drawn to the edge with an arrow, its label exact.
    lo, hi = max(min(vals), -_CLIP), min(max(vals), _CLIP)
    pad = (hi - lo) * 0.08 or 0.05
    scale = _Scale(lo - pad, hi + pad, left, width - right)
    sx = lambda x: scale(min(max(x, lo - pad), hi + pad))  # noqa: E731
    axis = height - 24  # tick labels; the legend below them
    body = [f'<text x="{left}" y="16" class="axis-title">relative effect vs control '
            f'(thick: 95% CI, thin: always-valid sequential CI)</text>',
            _legend([("better (significant)", _GOOD, "box"), ("worse (significant)", _BAD, "box"),
                     ("not significant", _NEUTRAL, "box"), ("95% CI", _NEUTRAL, "line"),
                     ("always-valid CI", _NEUTRAL, "dash")], 20, height - 4, 165)]
    for t in _nice_ticks(lo - pad, hi + pad):
        x = sx(t)
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 6}" y2="{axis - 16}" class="grid"/>'
                    f'<text x="{x:.1f}" y="{axis}" class="tick" text-anchor="middle">{_fmt_pct(t)}</text>')
    x0 = sx(0.0)
    body.append(f'<line x1="{x0:.1f}" x2="{x0:.1f}" y1="{top - 10}" y2="{axis - 16}" class="zero"/>')
    for i, r in enumerate(rows):
        y = top + row_h * i + row_h / 2
        body.append(f'<g class="forest-row" data-metric="{escape(str(r["metric"]))}">'
                    f'<text x="{left - 10}" y="{y + 4:.1f}" text-anchor="end" class="label">'
                    f'{escape(str(r["label"]))}</text>')
        est = r.get("estimate")
        if est is None or r.get("ci_lower") is None:
            body.append(f'<text x="{left + 6}" y="{y + 4:.1f}" class="na">'
                        f'{escape(str(r.get("error") or "not available"))}</text></g>')
            continue
        better = (est > 0) == bool(r["higher_is_better"])
        color = (_GOOD if better else _BAD) if r.get("significant") else _NEUTRAL
        if r.get("seq_lower") is not None:
            body.append(f'<line x1="{sx(r["seq_lower"]):.1f}" x2="{sx(r["seq_upper"]):.1f}" y1="{y:.1f}" '
                        f'y2="{y:.1f}" stroke="{color}" stroke-width="1.5" stroke-dasharray="4 3"/>')
        beyond = [x for x in (r["ci_lower"], r["ci_upper"], est) if not lo - pad <= x <= hi + pad]
        for edge in sorted({lo - pad if x < lo - pad else hi + pad for x in beyond}):
            tip, back = sx(edge), sx(edge) + (7 if edge < 0 else -7)
            body.append(f'<path class="beyond" d="M{tip:.1f},{y:.1f} L{back:.1f},{y - 6:.1f} L{back:.1f},{y + 6:.1f} Z" '
                        f'fill="{color}"/>')
        body.append(f'<line x1="{sx(r["ci_lower"]):.1f}" x2="{sx(r["ci_upper"]):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                    f'stroke="{color}" stroke-width="5" stroke-linecap="round" opacity="0.75"/>'
                    f'<circle cx="{sx(est):.1f}" cy="{y:.1f}" r="5" fill="{color}"/>'
                    f'<text x="{width - right + 4}" y="{y + 4:.1f}" class="tick" text-anchor="end" '
                    f'dx="-2" dy="-9">{_fmt_pct(est)}</text></g>')
    return _svg(width, height, body, "forest-plot", "Forest plot of relative effects")


def histogram_plot(hist: dict[str, Any] | None, width: int = 860, height: int = 260,
                   colors: dict[str, str] | None = None) -> str:
    """Latency distribution per variant: share of requests per bin, as step lines."""
    left, right, top, bottom = 50, 20, 30, 36
    if not hist or not hist.get("counts"):
        return _svg(width, 60, ['<text x="10" y="30" class="na">no latency data yet</text>'],
                    "latency-histogram", "Latency distribution per variant")
    width_ms, counts = hist["bin_width_ms"], hist["counts"]
    shares = {v: [c / max(sum(cs), 1) for c in cs] for v, cs in counts.items()}
    n_bins = len(next(iter(shares.values())))
    sx = _Scale(0, width_ms * n_bins, left, width - right)
    sy = _Scale(0, max(max(s) for s in shares.values()) * 1.1 or 1, height - bottom, top)
    body = []
    for t in _nice_ticks(0, width_ms * n_bins):
        body.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{height - bottom}" class="grid"/>'
                    f'<text x="{sx(t):.1f}" y="{height - bottom + 16}" class="tick" '
                    f'text-anchor="middle">{t:g}</text>')
    body.append(f'<text x="{(left + width - right) / 2}" y="{height - 4}" class="axis-title" '
                f'text-anchor="middle">latency (ms), ok requests; last bin: at or above {hist["upper_ms"]:.0f} ms'
                f'</text>')
    colors = colors or variant_colors(sorted(shares))
    order = [v for v in colors if v in shares] + sorted(v for v in shares if v not in colors)
    colors = {**variant_colors(order), **colors}
    body.append(_legend([(v, colors[v], "box") for v in order], left + 8, 16, 160))
    for variant in order:
        share, color = shares[variant], colors[variant]
        pts = []
        for i, s in enumerate(share):
            pts += [f"{sx(i * width_ms):.1f},{sy(s):.1f}", f"{sx((i + 1) * width_ms):.1f},{sy(s):.1f}"]
        body.append(f'<polyline class="hist-line" data-variant="{escape(variant)}" points="{" ".join(pts)}" '
                    f'fill="none" stroke="{color}" stroke-width="2"/>')
    return _svg(width, height, body, "latency-histogram", "Latency distribution per variant")


def timeseries_plot(ts: dict[str, Any] | None, width: int = 860, height: int = 280,
                    colors: dict[str, str] | None = None) -> str:
    """Cumulative relative effect by day with fixed CI band and sequential bounds (dashed)."""
    left, right, top, bottom = 60, 50, 30, 40
    series = (ts or {}).get("series") or {}
    points = [p for pts in series.values() for p in pts if p["estimate"] is not None]
    if not points:
        return _svg(width, 60, ['<text x="10" y="30" class="na">not enough data for a time series yet</text>'],
                    "timeseries-plot", "Cumulative effect over time")
    days = sorted({p["day"] for pts in series.values() for p in pts})
    vals = [0.0] + [p[k] for p in points for k in ("seq_lower", "seq_upper", "estimate") if p[k] is not None]
    sx = _Scale(0, len(days) - 1, left, width - right) if len(days) > 1 else _Scale(-1, 1, left, width - right)
    sy = _Scale(min(vals), max(vals), height - bottom, top)
    body = [f'<line x1="{left}" x2="{width - right}" y1="{sy(0):.1f}" y2="{sy(0):.1f}" class="zero"/>']
    for t in _nice_ticks(min(vals), max(vals)):
        body.append(f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" class="tick" text-anchor="end">{_fmt_pct(t)}</text>'
                    f'<line x1="{left}" x2="{width - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>')
    for i, d in enumerate(days):
        body.append(f'<text x="{sx(i):.1f}" y="{height - bottom + 16}" class="tick" text-anchor="middle">'
                    f'{escape(str(d))}</text>')
    body.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" class="axis-title" text-anchor="middle">'
                f'{escape(str(ts.get("metric")))}: cumulative relative effect by day of first activity; '
                f'dashed: sequential bounds</text>')
    colors = {**variant_colors(["control", *sorted(series)]), **(colors or {})}
    legend = [(f"{v} vs control", colors[v], "line") for v in sorted(series)]
    body.append(_legend([*legend, ("95% CI band", _NEUTRAL, "box"), ("always-valid bounds", _NEUTRAL, "dash")],
                        left + 8, 16, 170))
    for variant, pts in sorted(series.items()):
        color = colors[variant]
        idx = {d: i for i, d in enumerate(days)}
        ok = [p for p in pts if p["estimate"] is not None and p["ci_lower"] is not None]
        if not ok:
            continue
        band = [f"{sx(idx[p['day']]):.1f},{sy(p['ci_upper']):.1f}" for p in ok] + [
            f"{sx(idx[p['day']]):.1f},{sy(p['ci_lower']):.1f}" for p in reversed(ok)]
        body.append(f'<polygon points="{" ".join(band)}" fill="{color}" opacity="0.15"/>')
        for key in ("seq_lower", "seq_upper"):
            line = " ".join(f"{sx(idx[p['day']]):.1f},{sy(p[key]):.1f}" for p in ok)
            body.append(f'<polyline class="seq-bound" points="{line}" fill="none" stroke="{color}" '
                        f'stroke-dasharray="5 4" stroke-width="1.5"/>')
        line = " ".join(f"{sx(idx[p['day']]):.1f},{sy(p['estimate']):.1f}" for p in ok)
        body.append(f'<polyline class="effect-line" data-variant="{escape(variant)}" points="{line}" fill="none" '
                    f'stroke="{color}" stroke-width="2.5"/>')
        for p in ok:  # markers: a single day (a young experiment) has no line to draw
            x = sx(idx[p["day"]])
            body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{sy(p["seq_lower"]):.1f}" y2="{sy(p["seq_upper"]):.1f}" '
                        f'stroke="{color}" stroke-dasharray="5 4" stroke-width="1.5"/>'
                        f'<circle cx="{x:.1f}" cy="{sy(p["estimate"]):.1f}" r="4" fill="{color}"/>')
    return _svg(width, height, body, "timeseries-plot", "Cumulative effect over time")
