"""abtest.stats — the statistics engine of abtest (numpy and scipy only).

Pure functions over per-variant *sufficient statistics* (counts, sums, sums of
squares and cross-products computed in SQL); frozen dataclasses out; no I/O.
Invalid arguments raise ValueError; expected analysis failures (empty variant,
n < 2, zero variance, zero baseline) come back as results with an ``error``
message.

Typical report flow for one treatment vs control::

    from abtest import stats as S

    srm = S.srm_test([n_control, n_treatment], weights=[0.5, 0.5])

    # unit-level metric (conversion): one 0/1 value per unit
    conv = S.welch_test(S.MeanStats.proportion(n_c, k_c),
                        S.MeanStats.proportion(n_t, k_t))
    # request-level metric randomized by unit (latency, error rate)
    lat = S.welch_test(S.RatioStats(...control sums...), S.RatioStats(...))
    # quantile (see abtest.stats.quantiles for the SQL recipe)
    p99 = S.compare_quantiles(S.quantile_estimate(0.99, ...), S.quantile_estimate(0.99, ...))

    views = {name: S.analyze(c, higher_is_better=hib) for name, c, hib in ...}
    adj = S.adjust_p_values([v.comparison.absolute.p_value ...], method="holm")
    plan = S.power_analysis(ctrl_stats, trt_stats, mde=0.02, days_elapsed=3)
    rec = S.recommend(S.MetricEvidence.from_effect("conversion", views["conversion"].sequential.relative, True),
                      guardrails=[S.MetricEvidence.from_effect("error_rate", ..., False, margin=0.1)],
                      srm=srm, power=plan)

Modules: ``sufficient`` (MeanStats, RatioStats), ``capping`` (winsorization
and percentile_cont), ``frequentist`` (Welch test, relative lift),
``quantiles`` (cluster-aware quantile CIs), ``srm``, ``sequential``
(confidence sequences), ``bayesian`` (chance to win, expected loss),
``multiple`` (Holm, Benjamini-Hochberg), ``power``, ``decision``
(recommendation), ``analysis`` (all views of one comparison). Each module's
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
)
from .analysis import MetricAnalysis, analyze
from .bayesian import BayesianResult, bayesian_test, gaussian_chance_and_loss
from .capping import DEFAULT_CAP_LEVEL, apply_cap, choose_cap, percentile_cont, percentile_cont_ranks
from .decision import (
    Action,
    MetricEvidence,
    Recommendation,
    guardrail_status,
    primary_status,
    recommend,
)
from .frequentist import Comparison, VariantEstimate, compare_estimates, variant_estimate, welch_test
from .multiple import AdjustedPValues, adjust_p_values
from .power import PowerResult, achieved_power, power_analysis, required_units_per_variant
from .quantiles import (
    QuantileEstimate,
    QuantileRanks,
    compare_quantiles,
    quantile_estimate,
    quantile_from_values,
    quantile_ranks,
)
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
    # capping
    "DEFAULT_CAP_LEVEL", "apply_cap", "choose_cap", "percentile_cont", "percentile_cont_ranks",
    # frequentist
    "Effect", "Comparison", "VariantEstimate", "welch_test", "compare_estimates",
    "variant_estimate",
    # quantiles
    "QuantileEstimate", "QuantileRanks", "quantile_ranks", "quantile_estimate",
    "compare_quantiles", "quantile_from_values",
    # SRM
    "DEFAULT_SRM_THRESHOLD", "SRMResult", "srm_test",
    # sequential
    "DEFAULT_N_STAR", "SequentialComparison", "SequentialEffect", "sequential_test",
    "sequential_radius", "always_valid_p_value", "mixture_rho", "radius_ratio",
    # bayesian
    "BayesianResult", "bayesian_test", "gaussian_chance_and_loss",
    # multiple comparisons
    "AdjustedPValues", "adjust_p_values",
    # power
    "PowerResult", "power_analysis", "achieved_power", "required_units_per_variant",
    # decision
    "Action", "MetricEvidence", "Recommendation", "recommend", "guardrail_status",
    "primary_status",
    # all views of one comparison
    "MetricAnalysis", "analyze",
    # error messages
    "MSG_EMPTY_VARIANT", "MSG_TOO_FEW_UNITS", "MSG_ZERO_VARIANCE", "MSG_ZERO_BASELINE",
    "MSG_ZERO_DENOMINATOR", "MSG_TOO_FEW_FOR_QUANTILE",
]
