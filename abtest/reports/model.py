"""The typed report: frozen dataclasses that :func:`abtest.reports.build_report` returns.

The HTML page, the CSV table, the CLI and the guardrails read these objects; the JSON body of
``GET /v1/experiments/<key>/report`` (a documented contract) is :meth:`Report.to_json`, the one
serialisation: each dataclass becomes an object of its fields in declaration order (so the field
order here *is* the JSON's key order). Field metadata: ``json=False`` keeps a field out of the
JSON (e.g. a failure's ``error_code``), ``omit_none`` drops it when None, ``flatten`` merges a
mapping into its parent object. Non-finite floats become None (``null``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

__all__ = [
    "Count", "Estimate", "RatioEstimate", "QuantileEstimateView", "EffectView", "SequentialView", "ExpectedLoss",
    "ComparisonResult", "MetricResult", "GuardrailResult", "PowerPlan", "TreatmentRecommendation",
    "OverallRecommendation", "PrimaryBasis", "SRMVariant", "SRMBlock", "VariantSummary", "TimePoint", "TimeSeries",
    "Histogram", "ShadowSummary", "QualityResult", "QualitySection", "Breach", "ExperimentInfo", "QuantileMethod", "MultipleTesting",
    "Options", "Report", "clean", "CupedAdjustment", "CupedView", "Interaction", "SegmentComparison", "SegmentLevel",
    "SegmentSection", "CohortUnits", "EstimatorView",
]

from .sections import (  # noqa: E402 - the report's optional sections, re-exported here
    CohortUnits,
    EstimatorView,
    CupedAdjustment,
    CupedView,
    Interaction,
    QualityResult,
    QualitySection,
    SegmentComparison,
    SegmentLevel,
    SegmentSection,
)

_HIDDEN = {"json": False}


def clean(x: Any) -> Any:
    """JSON-safe numbers: NaN and infinities become None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass(frozen=True)
class Count:
    """The integers behind a rate: ``numerator`` ``counted`` of ``denominator`` ``of``
    (e.g. 25 conversions of 109 units, 3 errors of 412 requests, 2 truncated of 380 ok requests)."""

    counted: str  # conversions | errors | truncated
    numerator: int
    denominator: int
    of: str  # units | requests | ok requests


@dataclass(frozen=True)
class Estimate:
    """A variant's estimate with its CI (t(n-1) for means); ``count`` for rates only."""

    units: int
    estimate: float | None
    ci_lower: float | None
    ci_upper: float | None
    se: float | None
    error: str | None
    count: Count | None = field(default=None, metadata={"omit_none": True})


@dataclass(frozen=True)
class RatioEstimate(Estimate):
    """A ratio metric's estimate; ``requests`` is its denominator (e.g. ok requests)."""

    requests: int = 0


@dataclass(frozen=True)
class QuantileEstimateView:
    """A quantile's estimate with its cluster-aware CI."""

    units: int
    requests: int
    estimate: float | None
    ci_lower: float | None
    ci_upper: float | None
    se: float | None
    error: str | None


@dataclass(frozen=True)
class EffectView:
    estimate: float | None
    se: float | None
    ci_lower: float | None
    ci_upper: float | None
    p_value: float | None


@dataclass(frozen=True)
class SequentialView:
    """Always-valid CIs (confidence sequence) and p-value."""

    absolute: EffectView | None
    relative: EffectView | None
    p_value: float | None
    significant: bool
    n_star: float


@dataclass(frozen=True)
class ExpectedLoss:
    treatment: float | None
    control: float | None
    scale: str


@dataclass(frozen=True)
class ComparisonResult:
    """One treatment against control; ``error_code`` names the failure (not in the JSON)."""

    variant: str
    control_estimate: float | None
    treatment_estimate: float | None
    absolute: EffectView | None
    relative: EffectView | None
    p_value: float | None
    adjusted_p_value: float | None
    significant: bool
    sequential: SequentialView
    chance_to_win: float | None
    expected_loss: ExpectedLoss
    error: str | None
    relative_error: str | None
    error_code: str | None = field(default=None, metadata=_HIDDEN)


@dataclass(frozen=True)
class MetricResult:
    name: str
    kind: str
    shape: str
    role: str
    direction: str
    margin: float
    event: str | None
    attribution_window_s: int | None
    variants: Mapping[str, Estimate | QuantileEstimateView]
    comparisons: tuple[ComparisonResult, ...]
    # What the reader must know to read the figures, e.g. requests logged before a column existed
    # and left out ("312 requests logged before token counts were recorded are left out").
    note: str | None = field(default=None, metadata={"omit_none": True})
    cuped: CupedView | None = field(default=None, metadata={"omit_none": True})
    # a sticky experiment's phase holding units of several allocation cohorts: how it was compared
    estimator: EstimatorView | None = field(default=None, metadata={"omit_none": True})

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "increase"

    def comparison(self, variant: str) -> ComparisonResult:
        return next(c for c in self.comparisons if c.variant == variant)


@dataclass(frozen=True)
class GuardrailResult:
    metric: str
    status: str


@dataclass(frozen=True)
class PowerPlan:
    """The primary metric's sample-size plan. ``kind`` ``superiority``: sized to detect
    ``mde_relative`` (``absolute_mde`` in metric units); ``non_inferiority``: sized to show
    non-inferiority at the margin ``mde_relative`` (``absolute_mde`` in metric units) when the
    true difference is 0, ``required_units_per_variant`` for the always-valid interval the
    verdict uses and ``fixed_horizon_units_per_variant`` for one fixed-horizon look."""

    mde_relative: float
    absolute_mde: float | None
    required_units_per_variant: int | None
    current_units_per_variant: int | None
    achieved_power: float | None
    days_to_go: float | None
    error: str | None
    kind: str = "superiority"
    fixed_horizon_units_per_variant: int | None = None


@dataclass(frozen=True)
class PrimaryBasis:
    """The primary evidence a verdict used: the ``decision`` policy, the interval's ``scale``
    (``absolute`` difference or ``relative`` lift) and kind (``always-valid``, or ``exact`` for
    two constant arms), its ``estimate``, ``lower`` and ``upper`` ends at ``level``, and the
    relative ``margin`` (non-inferiority; None under superiority)."""

    decision: str
    metric: str
    scale: str
    interval: str
    level: float
    estimate: float | None
    lower: float | None
    upper: float | None
    margin: float | None


@dataclass(frozen=True)
class TreatmentRecommendation:
    """``basis`` is the primary evidence the action rests on (None: no primary metric)."""

    variant: str
    action: str  # ship | keep running | keep control | roll back
    reasons: tuple[str, ...]
    primary_metric: str | None
    primary_status: str
    guardrails: tuple[GuardrailResult, ...]
    power: PowerPlan | None
    basis: PrimaryBasis | None = None


@dataclass(frozen=True)
class OverallRecommendation:
    action: str
    variant: str | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class SRMVariant:
    variant: str
    units: int
    weight: float
    expected: float | None


@dataclass(frozen=True)
class SRMBlock:
    flagged: bool
    p_value: float | None
    chi2: float | None
    threshold: float
    message: str
    variants: tuple[SRMVariant, ...]


@dataclass(frozen=True)
class VariantSummary:
    variant: str
    engine: str
    control: bool
    weight: float
    units: int
    units_with_requests: int
    requests: int
    rejected: int
    unavailable: int


@dataclass(frozen=True)
class TimePoint:
    day: str
    units: int
    estimate: float | None
    ci_lower: float | None
    ci_upper: float | None
    seq_lower: float | None
    seq_upper: float | None


@dataclass(frozen=True)
class TimeSeries:
    metric: str
    scale: str
    by: str
    series: Mapping[str, tuple[TimePoint, ...]]


@dataclass(frozen=True)
class Histogram:
    bin_width_ms: float
    upper_ms: float
    counts: Mapping[str, tuple[int, ...]]
    note: str


@dataclass(frozen=True)
class ShadowSummary:
    variant: str
    requests: float
    latency_mean_ms: float | None
    errors: float
    output_matches: float
    compared: float


@dataclass(frozen=True)
class Breach:
    """The last guardrail breach's audit entry: its ``changes`` (reason, breaches ...) inline."""

    at: str
    actor: str
    changes: Mapping[str, Any] = field(default_factory=dict, metadata={"flatten": True})

    @property
    def reason(self) -> str | None:
        return self.changes.get("reason")


@dataclass(frozen=True)
class ExperimentInfo:
    key: str
    name: str
    hypothesis: str
    owner: str
    status: str
    phase: int
    treatment_paused: bool
    created_at: str | None
    started_at: str | None
    stopped_at: str | None
    updated_at: str | None
    last_guardrail_breach: Breach | None


@dataclass(frozen=True)
class QuantileMethod:
    estimates: str
    relative_accuracy: float
    unit_step: str
    sampled_units: Mapping[str, int] | None = field(default=None, metadata={"omit_none": True})


@dataclass(frozen=True)
class MultipleTesting:
    method: str
    family: int


@dataclass(frozen=True)
class Options:
    alpha: float
    cap: float | None
    cap_value_ms: float | None
    quantiles: QuantileMethod | None
    mde: float
    n_star: float
    multiple_testing: MultipleTesting
    recommendation_basis: str
    # The experiment's decision policy (superiority | non_inferiority) and the phase reported.
    decision: str = "superiority"
    phase: int | None = None


@dataclass(frozen=True)
class Report:
    """The report; the JSON opens with the answer: ``recommendation``, ``headline`` (one sentence
    in the product's words, every number taken from the fields below), then ``experiment``,
    ``generated_at``, ``options``, ``srm``, ``variants``, ``metrics``, ``recommendations``,
    ``timeseries``, ``latency_histogram``, ``shadow`` and ``quality``."""

    recommendation: OverallRecommendation
    headline: str
    experiment: ExperimentInfo
    generated_at: str
    options: Options
    srm: SRMBlock
    variants: tuple[VariantSummary, ...]
    metrics: tuple[MetricResult, ...]
    recommendations: tuple[TreatmentRecommendation, ...]
    timeseries: TimeSeries | None
    latency_histogram: Histogram | None
    shadow: tuple[ShadowSummary, ...]
    quality: QualitySection | None = None
    segments: tuple[SegmentSection, ...] | None = field(default=None, metadata={"omit_none": True})

    @property
    def control(self) -> str:
        return next(v.variant for v in self.variants if v.control)

    def variant(self, key: str) -> VariantSummary | None:
        return next((v for v in self.variants if v.variant == key), None)

    def treatment_recommendation(self, variant: str | None) -> TreatmentRecommendation | None:
        return next((r for r in self.recommendations if r.variant == variant), None)

    def metric(self, name: str) -> MetricResult:
        return next(m for m in self.metrics if m.name == name)

    def to_json(self) -> dict[str, Any]:
        """The JSON body of the report endpoint (the documented contract)."""
        return _plain(self)


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in fields(value):
            item = getattr(value, f.name)
            if not f.metadata.get("json", True) or (item is None and f.metadata.get("omit_none")):
                continue
            if f.metadata.get("flatten"):
                out.update(_plain(dict(item)))
            else:
                out[f.name] = _plain(item)
        return out
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)  # a stats Failure is a str with a code: the JSON holds the message
    return clean(value)
