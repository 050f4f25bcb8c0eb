"""One call per metric: frequentist, sequential and Bayesian views together.

The report layer builds a :class:`~abtest.stats.frequentist.Comparison` per
treatment and metric (``welch_test`` for means and ratios,
``compare_quantiles`` for quantiles) and passes it to :func:`analyze`.
Adjusted p-values come afterwards, across all metric analyses of the report,
with :func:`~abtest.stats.multiple.adjust_p_values`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .bayesian import BayesianResult, Scale, bayesian_test
from .frequentist import Comparison
from .sequential import DEFAULT_N_STAR, SequentialComparison, sequential_test

__all__ = ["MetricAnalysis", "analyze"]


@dataclass(frozen=True)
class MetricAnalysis:
    """All views of one treatment-vs-control comparison of one metric."""

    comparison: Comparison
    sequential: SequentialComparison
    bayesian: BayesianResult


def analyze(comparison: Comparison, higher_is_better: bool = True,
            n_star: float = DEFAULT_N_STAR, bayesian_scale: Scale = "relative") -> MetricAnalysis:
    """Add the always-valid CI/p-value and the chance to win to a comparison."""
    return MetricAnalysis(
        comparison=comparison,
        sequential=sequential_test(comparison, n_star=n_star),
        bayesian=bayesian_test(comparison, scale=bayesian_scale,
                               higher_is_better=higher_is_better),
    )
