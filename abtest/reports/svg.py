"""Tiny inline-SVG charts for the HTML report (no JavaScript, no external assets).

Each function returns one ``<svg>`` element as a string; every text is escaped. Scales are
linear; the caller passes data already in the unit it wants shown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["forest_plot", "histogram_plot", "timeseries_plot", "PALETTE"]

PALETTE = ("#1f5fa8", "#d9642b", "#2a9d5b", "#8e44ad", "#b8860b", "#c0392b")
_GOOD, _BAD, _NEUTRAL = "#1e8e3e", "#c5221f", "#5f6368"


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


def forest_plot(rows: Sequence[dict[str, Any]], width: int = 860) -> str:
    """Relative effects with fixed (thick) and sequential (thin) CIs, one line per row.

    Each row: ``label``, ``estimate``, ``ci_lower``/``ci_upper``, ``seq_lower``/``seq_upper``,
    ``higher_is_better``, ``significant``; rows without an estimate show their ``error``.
    """
    row_h, top, left, right = 30, 34, 250, 30
    height = top + row_h * max(len(rows), 1) + 30
    vals = [0.0] + [x for r in rows for x in (r.get("seq_lower"), r.get("seq_upper"),
                                              r.get("ci_lower"), r.get("ci_upper")) if x is not None]
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.08 or 0.05
    sx = _Scale(lo - pad, hi + pad, left, width - right)
    body = [f'<text x="{left}" y="16" class="axis-title">relative effect vs control '
            f'(thick: 95% CI, thin: always-valid sequential CI)</text>']
    for t in _nice_ticks(lo - pad, hi + pad):
        x = sx(t)
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 6}" y2="{height - 26}" class="grid"/>'
                    f'<text x="{x:.1f}" y="{height - 10}" class="tick" text-anchor="middle">{_fmt_pct(t)}</text>')
    x0 = sx(0.0)
    body.append(f'<line x1="{x0:.1f}" x2="{x0:.1f}" y1="{top - 10}" y2="{height - 26}" class="zero"/>')
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
        body.append(f'<line x1="{sx(r["ci_lower"]):.1f}" x2="{sx(r["ci_upper"]):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                    f'stroke="{color}" stroke-width="5" stroke-linecap="round" opacity="0.75"/>'
                    f'<circle cx="{sx(est):.1f}" cy="{y:.1f}" r="5" fill="{color}"/>'
                    f'<text x="{width - right + 4}" y="{y + 4:.1f}" class="tick" text-anchor="end" '
                    f'dx="-2" dy="-9">{_fmt_pct(est)}</text></g>')
    return _svg(width, height, body, "forest-plot", "Forest plot of relative effects")


def histogram_plot(hist: dict[str, Any] | None, width: int = 860, height: int = 260) -> str:
    """Latency distribution per variant: share of requests per bin, as step lines."""
    left, right, top, bottom = 50, 20, 24, 36
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
    for k, (variant, share) in enumerate(sorted(shares.items())):
        color = PALETTE[k % len(PALETTE)]
        pts = []
        for i, s in enumerate(share):
            pts += [f"{sx(i * width_ms):.1f},{sy(s):.1f}", f"{sx((i + 1) * width_ms):.1f},{sy(s):.1f}"]
        body.append(f'<polyline class="hist-line" data-variant="{escape(variant)}" points="{" ".join(pts)}" '
                    f'fill="none" stroke="{color}" stroke-width="2"/>'
                    f'<text x="{width - right - 4}" y="{top + 14 * (k + 1)}" text-anchor="end" fill="{color}" '
                    f'class="legend">{escape(variant)}</text>')
    return _svg(width, height, body, "latency-histogram", "Latency distribution per variant")


def timeseries_plot(ts: dict[str, Any] | None, width: int = 860, height: int = 280) -> str:
    """Cumulative relative effect by day with fixed CI band and sequential bounds (dashed)."""
    left, right, top, bottom = 60, 50, 24, 40
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
    for k, (variant, pts) in enumerate(sorted(series.items())):
        color = PALETTE[(k + 1) % len(PALETTE)]
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
