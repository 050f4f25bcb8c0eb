"""Sample ratio mismatch (SRM): are units split as configured?

A mismatch between configured weights and observed unit counts means the
assignment or the logging is broken (bots, crashes in one arm, redirects), and
every metric comparison is then suspect. The check is Pearson's chi-square
goodness of fit of the unit counts per variant against
``expected_i = total * weight_i / sum(weights)``, with ``k - 1`` degrees of
freedom (identical to ``scipy.stats.chisquare(observed, expected)``). It is
flagged at ``p < 0.001`` (the industry convention: SRM is checked on every
look, so a strict threshold keeps false alarms rare). A flagged SRM blocks a
"ship" recommendation (see :mod:`abtest.stats.decision`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats as sps

from ._common import check_alpha, check_count, check_finite

__all__ = ["DEFAULT_SRM_THRESHOLD", "SRMResult", "srm_test"]

DEFAULT_SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class SRMResult:
    """Outcome of the SRM check; ``message`` is a sentence for the report."""

    observed: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    df: int
    p_value: float
    threshold: float
    flagged: bool
    message: str


def srm_test(observed: Sequence[int], weights: Sequence[float],
             threshold: float = DEFAULT_SRM_THRESHOLD) -> SRMResult:
    """Pearson chi-square test of unit counts against configured weights.

    Raises ValueError for fewer than two variants, mismatched lengths,
    negative counts or non-positive weights. No units at all is not an
    error: p = 1, not flagged, with an explanatory message.
    """
    threshold = check_alpha(threshold)
    counts = tuple(check_count(c, "observed count") for c in observed)
    w = [check_finite(x, "weight") for x in weights]
    if len(counts) < 2 or len(counts) != len(w):
        raise ValueError("need one weight per variant and at least two variants")
    if any(x <= 0 for x in w):
        raise ValueError("weights must be > 0")
    total = sum(counts)
    expected = tuple(total * x / sum(w) for x in w)
    df = len(counts) - 1
    if total == 0:
        return SRMResult(counts, expected, 0.0, df, 1.0, threshold, False,
                         "no units yet; sample ratio not checked")
    chi2 = math.fsum((o - e) ** 2 / e for o, e in zip(counts, expected))
    p = float(sps.chi2.sf(chi2, df))
    flagged = p < threshold
    if flagged:
        msg = (f"sample ratio mismatch: observed {list(counts)} units vs expected "
               f"{[round(e, 1) for e in expected]} (chi2={chi2:.2f}, p={p:.2g} < "
               f"{threshold:g}); results are not trustworthy until the cause is found")
    else:
        msg = f"sample ratio consistent with the configured weights (p={p:.3g})"
    return SRMResult(counts, expected, chi2, df, p, threshold, flagged, msg)
