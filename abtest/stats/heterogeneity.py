"""Heterogeneous treatment effects across segments: Cochran's Q test of interaction.

Given the effect ``d_i`` and standard error ``s_i`` of the same comparison in ``k`` disjoint
segments (independent, since each unit is in one segment), with inverse-variance weights
``w_i = 1 / s_i^2`` and the pooled effect ``d_bar = sum w_i d_i / sum w_i``:
``Q = sum w_i (d_i - d_bar)^2``, chi-square with ``k - 1`` degrees of freedom under "the effect
is the same in every segment". This is the Wald test of the segment x treatment interaction,
and ``Q`` equals ``statsmodels.stats.meta_analysis.combine_effects(...).q`` (the tests check it). Segments whose effect or standard error is undefined are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as sps

__all__ = ["HeterogeneityResult", "heterogeneity_test"]


@dataclass(frozen=True)
class HeterogeneityResult:
    """``q``, ``df`` (segments used - 1), ``p_value``; all None with ``error`` below two segments."""

    q: float | None
    df: int
    p_value: float | None
    segments: int
    error: str | None = None


def heterogeneity_test(effects: Sequence[tuple[float | None, float | None]]) -> HeterogeneityResult:
    """Cochran's Q over ``(estimate, se)`` pairs, one per segment."""
    used = [(d, s) for d, s in effects if d is not None and s is not None
            and math.isfinite(d) and math.isfinite(s) and s > 0]
    if len(used) < 2:
        return HeterogeneityResult(None, 0, None, len(used),
                                   "fewer than two segments with an effect; no interaction test")
    w = [1.0 / (s * s) for _, s in used]
    pooled = sum(wi * d for wi, (d, _) in zip(w, used)) / sum(w)
    q = sum(wi * (d - pooled) ** 2 for wi, (d, _) in zip(w, used))
    df = len(used) - 1
    return HeterogeneityResult(q, df, float(sps.chi2.sf(q, df)), len(used))
