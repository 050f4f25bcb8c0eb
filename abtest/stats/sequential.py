"""Always-valid inference: confidence sequences for continuous monitoring.

A fixed-horizon CI is valid only if it is looked at once. Teams watch the
report every day, and "stop as soon as p < 0.05" inflates the false-positive
rate several-fold (measured in ``tests/stats/test_stats_sequential.py``). A
confidence sequence is valid *simultaneously at every sample size*, so it may
be checked after every batch.

Method: the two-sided Gaussian-mixture confidence sequence of Howard et al.
(2021) in the asymptotic form of Waudby-Smith et al. (2023, eq. 9 and 155), as
used by GrowthBook (gbstats ``SequentialTwoSidedTTest``) and Eppo. For an effect
estimate with standard error ``se`` computed from ``N = n_control +
n_treatment`` units, let ``s^2 = se^2 N`` (the per-unit variance) and

    rho^2  = (-2 ln alpha + ln(-2 ln alpha + 1)) / N*          (tuning)
    radius = s * sqrt( 2 (N rho^2 + 1) / (N^2 rho^2) * ln( sqrt(N rho^2 + 1) / alpha ) )
    CS     = estimate +- radius
    p      = min(1, sqrt(N rho^2 + 1) * exp(-rho^2 N z^2 / (2 (N rho^2 + 1))))

with ``z = estimate / se``; ``p`` is the inverse of the mixture likelihood
ratio (an e-value), and ``p < alpha`` exactly when the CS excludes 0.

Tuning ``N*`` (default 5,000 units in total): the sample size at which the
sequence is tightest relative to a fixed-horizon CI. With alpha = 0.05 the
radius is 1.55x the fixed-horizon ``1.96 se`` at ``N = N*``, 1.97x at
``N = N*/10`` and 1.65x at ``N = 10 N*`` (``radius_ratio`` computes this).
Choose N* near the expected final total units; a poor choice costs width, never
validity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from ._common import Effect, check_alpha
from .frequentist import Comparison

__all__ = [
    "DEFAULT_N_STAR",
    "SequentialComparison",
    "SequentialEffect",
    "always_valid_p_value",
    "mixture_rho",
    "radius_ratio",
    "sequential_radius",
    "sequential_test",
]

DEFAULT_N_STAR = 5000.0


@dataclass(frozen=True)
class SequentialEffect:
    """Always-valid CI and p-value for one effect (absolute or relative)."""

    estimate: float
    se: float
    ci_lower: float
    ci_upper: float
    p_value: float

    def excludes_zero(self) -> bool:
        return self.ci_lower > 0.0 or self.ci_upper < 0.0


@dataclass(frozen=True)
class SequentialComparison:
    """Sequential counterpart of a :class:`~abtest.stats.frequentist.Comparison`."""

    n_total: int
    alpha: float
    n_star: float
    absolute: SequentialEffect | None
    relative: SequentialEffect | None
    error: str | None = None

    @property
    def significant(self) -> bool:
        return self.absolute is not None and self.absolute.p_value < self.alpha


def mixture_rho(alpha: float, n_star: float = DEFAULT_N_STAR) -> float:
    """Mixing scale ``rho`` that makes the sequence tightest at ``N = n_star``."""
    alpha = check_alpha(alpha)
    if not n_star > 0:
        raise ValueError(f"n_star must be > 0, got {n_star!r}")
    l = -2.0 * math.log(alpha)
    return math.sqrt((l + math.log(l + 1.0)) / n_star)


def sequential_radius(se: np.ndarray | float, n_total: np.ndarray | float,
                      alpha: float = 0.05, n_star: float = DEFAULT_N_STAR) -> np.ndarray | float:
    """Half-width of the confidence sequence (vectorised over ``se``/``n_total``)."""
    rho2 = mixture_rho(alpha, n_star) ** 2
    n = np.asarray(n_total, dtype=float)
    s = np.asarray(se, dtype=float) * np.sqrt(n)
    a = n * rho2 + 1.0
    r = s * np.sqrt(2.0 * a / (n * n * rho2) * np.log(np.sqrt(a) / alpha))
    return float(r) if np.ndim(r) == 0 else r


def always_valid_p_value(estimate: np.ndarray | float, se: np.ndarray | float,
                         n_total: np.ndarray | float, alpha: float = 0.05,
                         n_star: float = DEFAULT_N_STAR) -> np.ndarray | float:
    """Always-valid p-value ``min(1, 1 / mixture likelihood ratio)`` (vectorised).

    ``alpha`` only enters through the tuning ``rho``; the p-value is consistent
    with the CS at that ``alpha``.
    """
    rho2 = mixture_rho(alpha, n_star) ** 2
    n = np.asarray(n_total, dtype=float)
    z2 = (np.asarray(estimate, dtype=float) / np.asarray(se, dtype=float)) ** 2
    a = n * rho2 + 1.0
    log_p = 0.5 * np.log(a) - rho2 * z2 * n / (2.0 * a)
    p = np.minimum(1.0, np.exp(np.minimum(log_p, 0.0)))
    return float(p) if np.ndim(p) == 0 else p


def radius_ratio(n_total: float, alpha: float = 0.05, n_star: float = DEFAULT_N_STAR) -> float:
    """Sequential radius divided by the fixed-horizon normal half-width."""
    return float(sequential_radius(1.0, n_total, alpha, n_star)) / float(
        sps.norm.ppf(1.0 - alpha / 2.0))


def _sequential_effect(effect: Effect | None, n_total: int, alpha: float,
                       n_star: float) -> SequentialEffect | None:
    if effect is None:
        return None
    r = float(sequential_radius(effect.se, n_total, alpha, n_star))
    p = float(always_valid_p_value(effect.estimate, effect.se, n_total, alpha, n_star))
    return SequentialEffect(effect.estimate, effect.se, effect.estimate - r,
                            effect.estimate + r, p)


def sequential_test(comparison: Comparison, n_star: float = DEFAULT_N_STAR,
                    alpha: float | None = None) -> SequentialComparison:
    """Confidence sequences for both effects of a fixed-horizon comparison.

    Takes the output of :func:`welch_test` or :func:`compare_estimates` (the
    point estimates and standard errors are reused; the t quantile is not) and
    ``N = comparison.n_total`` units. ``alpha`` defaults to the comparison's.
    """
    a = comparison.alpha if alpha is None else check_alpha(alpha)
    mixture_rho(a, n_star)  # validates n_star
    n = comparison.n_total
    if comparison.error is not None:
        return SequentialComparison(n, a, n_star, None, None, comparison.error)
    return SequentialComparison(
        n, a, n_star,
        _sequential_effect(comparison.absolute, n, a, n_star),
        _sequential_effect(comparison.relative, n, a, n_star),
    )
