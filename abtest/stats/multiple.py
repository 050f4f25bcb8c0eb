"""Multiple-comparison corrections across metrics and variants.

A report with 6 metrics and 1 treatment makes 6 tests; at alpha = 0.05 the
chance of at least one false "significant" is up to 26%. Two corrections:

``"holm"`` — Holm-Bonferroni step-down; controls the family-wise error rate
    (probability of any false positive). Use for guardrails/decisions.
    Sorted p-values ``p_(1) <= ... <= p_(m)``:
    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``.
``"bh"`` — Benjamini-Hochberg step-up; controls the false discovery rate
    (expected share of false positives among discoveries). Use for exploring
    many secondary metrics: ``adj_(i) = min_{j >= i} min(1, m p_(j) / j)``.

Both equal ``statsmodels.stats.multitest.multipletests`` (``"holm"``,
``"fdr_bh"``). ``None``/NaN p-values (comparisons that returned an error) are
passed through as None and do not count towards ``m``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from ._common import check_alpha

__all__ = ["AdjustedPValues", "adjust_p_values"]

Method = Literal["holm", "bh"]


@dataclass(frozen=True)
class AdjustedPValues:
    """Raw and adjusted p-values in input order; ``rejected`` at ``alpha``."""

    method: Method
    alpha: float
    raw: tuple[float | None, ...]
    adjusted: tuple[float | None, ...]
    rejected: tuple[bool, ...]


def _holm(p: np.ndarray) -> np.ndarray:
    m = p.size
    order = np.argsort(p, kind="mergesort")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.maximum.accumulate(stepped)
    return out


def _bh(p: np.ndarray) -> np.ndarray:
    m = p.size
    order = np.argsort(p, kind="mergesort")
    stepped = np.minimum(1.0, m * p[order] / np.arange(1, m + 1))
    out = np.empty(m)
    out[order] = np.minimum.accumulate(stepped[::-1])[::-1]
    return out


def adjust_p_values(p_values: Sequence[float | None], method: Method = "holm",
                    alpha: float = 0.05) -> AdjustedPValues:
    """Adjust a family of p-values; raises ValueError for p outside [0, 1]."""
    alpha = check_alpha(alpha)
    if method not in ("holm", "bh"):
        raise ValueError(f"method must be 'holm' or 'bh', got {method!r}")
    raw = tuple(None if p is None or math.isnan(p) else float(p) for p in p_values)
    valid = [i for i, p in enumerate(raw) if p is not None]
    vals = np.array([raw[i] for i in valid], dtype=float)
    if np.any((vals < 0) | (vals > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    adjusted: list[float | None] = [None] * len(raw)
    if vals.size:
        adj = _holm(vals) if method == "holm" else _bh(vals)
        for i, a in zip(valid, adj):
            adjusted[i] = float(a)
    rejected = tuple(a is not None and a <= alpha for a in adjusted)
    return AdjustedPValues(method, alpha, raw, tuple(adjusted), rejected)
