"""abtest.stats — the statistics engine of abtest (numpy and scipy only).

Pure functions over per-variant *sufficient statistics* (counts, sums, sums of
squares and cross-products computed in SQL); frozen dataclasses out; no I/O.
Invalid arguments raise ValueError; expected analysis failures (empty variant,
n < 2, zero variance, zero baseline) come back as results with an ``error``
message.

Report field -> API (one treatment vs control; see tests/stats/test_stats_report_flow.py
for the whole flow on simulated data)::

    SRM block                    srm_test([units_c, units_t], weights) -> SRMResult
    per-variant estimate + CI    variant_estimate(stats)   (quantiles: quantile_estimate)
    comparison                   welch_test(stats_c, stats_t)            means, ratios
                                 compare_quantiles(q_c, q_t)             p50/p95/p99
    absolute / relative effect   Comparison.absolute / .relative  (Effect: estimate,
                                 se, ci_lower, ci_upper, p_value, df)
    sequential CI, p-value       analyze(cmp, higher_is_better).sequential
    chance to win, expected loss analyze(...).bayesian
    adjusted p-value             adjust_p_values([all p-values of the report], "holm")
    significant                  Comparison.significant (fixed horizon) or
                                 SequentialComparison.significant (monitoring)
    power, days to go            power_analysis(stats_c, stats_t, mde, days_elapsed=...)
                                 noninferiority_plan(stats_c, stats_t, margin, ...)
    one-sided tests vs a margin  noninferiority_test(stats_c, stats_t, margin),
                                 equivalence_test(stats_c, stats_t, margin)   (fixed horizon)
    recommendation               recommend(MetricEvidence.from_effect(...primary...),
                                           [guardrail evidence], srm=..., power=...,
                                           decision="superiority" | "non_inferiority")
    guardrail auto-stop check    guardrail_status(MetricEvidence.from_effect(
                                     name, seq.relative, False, margin)) == "breached"

Sufficient statistics per metric (SQL GROUP BY unit, then variant):
``MeanStats(n, sum, sum_sq)`` for conversion (``MeanStats.proportion(n, k)``),
counts and sums of event values; ``RatioStats(n, num_sum, num_sum_sq, den_sum,
den_sum_sq, cross_sum)`` for latency (capped latency, see ``capping``) and
error rate; the quantile recipe is in ``abtest.stats.quantiles``. Every result
field is a finite float, a string, a bool or None: ``dataclasses.asdict``
output serialises to strict JSON.

Modules: ``sufficient`` (MeanStats, RatioStats), ``capping`` (winsorization
and percentile_cont), ``frequentist`` (Welch test, relative lift),
``quantiles`` (cluster-aware quantile CIs), ``sketch`` (the mergeable latency
sketch reports read quantiles from), ``srm``, ``sequential``
(confidence sequences), ``bayesian`` (chance to win, expected loss),
``multiple`` (Holm, Benjamini-Hochberg), ``cuped`` (regression adjustment on a pre-exposure
covariate), ``heterogeneity`` (Cochran's Q across segments), ``power``, ``noninferiority``
(one-sided tests against a margin, TOST), ``decision`` (recommendation; ``wording`` puts its
numbers in plain words), ``analysis`` (all views of one comparison). Each module's
docstring states its exact definitions and the reference it matches.
"""

from ._common import (
    MSG_EMPTY_VARIANT,
    MSG_TOO_FEW_FOR_QUANTILE,
    MSG_TOO_FEW_UNITS,
    MSG_ZERO_BASELINE,
    MSG_ZERO_DENOMINATOR,
    MSG_ZERO_VARIANCE,
    Effect,
    Failure,
    failure_code,
)
from .analysis import MetricAnalysis, analyze
from .bayesian import BayesianResult, bayesian_test, gaussian_chance_and_loss
from .capping import DEFAULT_CAP_LEVEL, apply_cap, choose_cap, percentile_cont, percentile_cont_ranks
from .decision import (
    DECISIONS,
    Action,
    Headline,
    MetricEvidence,
    Recommendation,
    constant_difference,
    guardrail_status,
    headline,
    metric_evidence,
    primary_status,
    recommend,
)
from .cuped import Adjusted, CupedMeanStats, CupedRatioStats, cuped_adjust, impute_missing, variance_reduction
from .frequentist import Comparison, VariantEstimate, compare_estimates, variant_estimate, welch_test
from .heterogeneity import HeterogeneityResult, heterogeneity_test
from .multiple import AdjustedPValues, adjust_p_values
from .noninferiority import EquivalenceResult, NonInferiorityResult, equivalence_test, noninferiority_test
from .power import (
    PowerResult,
    achieved_power,
    noninferiority_plan,
    noninferiority_units_per_variant,
    power_analysis,
    required_units_per_variant,
    sequential_noninferiority_power,
    sequential_noninferiority_units,
)
from .quantiles import (
    QuantileEstimate,
    QuantileRanks,
    compare_quantiles,
    quantile_estimate,
    quantile_from_values,
    quantile_ranks,
)
from .sketch import ACCURACY as SKETCH_ACCURACY
from .sketch import LatencySketch, bucket_index, bucket_value
from .sequential import (
    DEFAULT_N_STAR,
    SequentialComparison,
    SequentialEffect,
    always_valid_p_value,
    mixture_rho,
    radius_ratio,
    sequential_radius,
    sequential_test,
)
from .srm import DEFAULT_SRM_THRESHOLD, SRMResult, srm_test
from .sufficient import Estimable, MeanStats, RatioStats

__all__ = [
    # sufficient statistics
    "Estimable", "MeanStats", "RatioStats",
    # regression adjustment (CUPED)
    "Adjusted", "CupedMeanStats", "CupedRatioStats", "cuped_adjust", "impute_missing", "variance_reduction",
    # capping
    "DEFAULT_CAP_LEVEL", "apply_cap", "choose_cap", "percentile_cont", "percentile_cont_ranks",
    # frequentist
    "Effect", "Comparison", "VariantEstimate", "welch_test", "compare_estimates",
    "variant_estimate",
    # quantiles
    "QuantileEstimate", "QuantileRanks", "quantile_ranks", "quantile_estimate",
    "compare_quantiles", "quantile_from_values",
    # latency sketch
    "SKETCH_ACCURACY", "LatencySketch", "bucket_index", "bucket_value",
    # SRM
    "DEFAULT_SRM_THRESHOLD", "SRMResult", "srm_test",
    # sequential
    "DEFAULT_N_STAR", "SequentialComparison", "SequentialEffect", "sequential_test",
    "sequential_radius", "always_valid_p_value", "mixture_rho", "radius_ratio",
    # bayesian
    "BayesianResult", "bayesian_test", "gaussian_chance_and_loss",
    # interaction across segments
    "HeterogeneityResult", "heterogeneity_test",
    # multiple comparisons
    "AdjustedPValues", "adjust_p_values",
    # power
    "PowerResult", "power_analysis", "achieved_power", "required_units_per_variant",
    "noninferiority_plan", "noninferiority_units_per_variant", "sequential_noninferiority_power",
    "sequential_noninferiority_units",
    # one-sided tests against a margin
    "NonInferiorityResult", "EquivalenceResult", "noninferiority_test", "equivalence_test",
    # decision
    "DECISIONS", "Action", "MetricEvidence", "Recommendation", "recommend", "guardrail_status",
    "Headline", "headline", "metric_evidence", "constant_difference",
    "primary_status",
    # all views of one comparison
    "MetricAnalysis", "analyze",
    # error messages
    "MSG_EMPTY_VARIANT", "MSG_TOO_FEW_UNITS", "MSG_ZERO_VARIANCE", "MSG_ZERO_BASELINE",
    "MSG_ZERO_DENOMINATOR", "MSG_TOO_FEW_FOR_QUANTILE", "Failure", "failure_code",
]
