"""Numbers in plain words for the recommendation's reasons: effects with their units.

An effect is worded by its scale and the metric's unit:

``relative``            percent of the control: ``+12.4 %`` (interval ``+3.1 % to +21.0 %``)
``share`` (absolute)    a rate or share, in percentage points: ``+7.3 points``
``ms`` (absolute)       milliseconds: ``-38 ms``
anything else           the plain number, followed by the unit's name unless it is
                        ``number``, ``count`` or ``price`` (a currency amount)

Decimals follow the interval's width (two significant digits of the width, at most four
decimals), so a narrow interval is not rounded to ``+0 to +0``.
"""

from __future__ import annotations

import math

__all__ = ["amount", "decimals", "level", "percent", "span", "value"]

def _display(x: float, unit: str, relative: bool) -> float:
    return 100.0 * x if relative or unit == "share" else x


def decimals(lo: float, hi: float, unit: str, relative: bool) -> int:
    """Decimals for an interval ``[lo, hi]`` (raw values) on its display scale."""
    low = 1 if relative or unit == "share" else 0
    width = _display(hi, unit, relative) - _display(lo, unit, relative)
    if not (width > 0 and math.isfinite(width)):
        return low if relative or unit in ("share", "ms") else 2
    return min(max(low, 1 - math.floor(math.log10(width))), 4)


def _suffix(unit: str, relative: bool) -> str:
    if relative:
        return " %"
    if unit == "share":
        return " points"
    if unit in ("number", "count", "price"):
        return ""
    return f" {unit}"


def value(x: float, unit: str, relative: bool, places: int, signed: bool = True) -> str:
    """One value with its unit, e.g. ``+7.3 points``."""
    shown = _display(x, unit, relative)
    text = f"{shown:+.{places}f}" if signed else f"{shown:.{places}f}"
    if text.lstrip("+-") == f"{0:.{places}f}":  # no "-0.0"
        text = ("+" if signed else "") + text.lstrip("+-")
    return text + _suffix(unit, relative)


def amount(x: float, unit: str, places: int) -> str:
    """A variant's level (not a difference): a share as a percentage (``0.0 %``), else
    like :func:`value` without a sign."""
    if unit == "share":
        return f"{100.0 * x:.{places}f} %"
    return value(x, unit, False, places, signed=False)


def span(lo: float, hi: float, unit: str, relative: bool, places: int) -> str:
    """``lo to hi`` with the unit once at the end (``%`` after both ends: ``+3.1 % to +21.0 %``)."""
    if relative:
        return f"{value(lo, unit, True, places)} to {value(hi, unit, True, places)}"
    bare = value(lo, unit, False, places)
    suffix = _suffix(unit, False)
    if suffix:
        bare = bare[: -len(suffix)]
    return f"{bare} to {value(hi, unit, False, places)}"


def level(alpha: float) -> str:
    """``95 %`` for alpha = 0.05."""
    return f"{100.0 * (1.0 - alpha):.4g} %"


def percent(fraction: float) -> str:
    """A margin as a percentage without trailing zeros: ``2 %``, ``0.5 %``."""
    return f"{100.0 * fraction:.4g} %"
