"""The report's optional sections, as frozen dataclasses (re-exported by :mod:`abtest.reports.model`,
whose rules of serialisation they follow): CUPED per metric, segment breakdowns, output quality."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: model imports this module
    from .model import Estimate

__all__ = ["CohortUnits", "EstimatorView", "CupedAdjustment", "CupedView", "Interaction", "QualityResult", "QualitySection", "SegmentComparison",
           "SegmentLevel", "SegmentSection"]


@dataclass(frozen=True)
class CohortUnits:
    """One allocation cohort of a sticky experiment's phase: the phase its units were first
    assigned in, and the metric's units per variant."""

    phase: int
    units: Mapping[str, int]


@dataclass(frozen=True)
class EstimatorView:
    """How a metric of a phase holding several allocation cohorts was compared: ``estimator``
    is "post-stratified by allocation cohort" (per cohort, pooled by cohort size) or, for the
    metrics that are not, "pooled, not adjusted for allocation cohorts"; ``note`` why not."""

    estimator: str
    cohorts: tuple[CohortUnits, ...]
    note: str | None = field(default=None, metadata={"omit_none": True})


@dataclass(frozen=True)
class CupedAdjustment:
    """CUPED for one treatment: the pooled ``theta`` and the variance reduction of the difference."""

    variant: str
    theta: float | None
    variance_reduction: float | None


@dataclass(frozen=True)
class CupedView:
    """A metric's regression adjustment: lookback, units with history (of all units), per treatment."""

    lookback_days: int
    units_with_history: int
    units: int
    adjustments: tuple[CupedAdjustment, ...]


@dataclass(frozen=True)
class SegmentComparison:
    metric: str
    variant: str
    control_estimate: float | None
    treatment_estimate: float | None
    absolute: float | None
    ci_lower: float | None
    ci_upper: float | None
    relative: float | None
    p_value: float | None
    adjusted_p_value: float | None  # Benjamini-Hochberg across every segment comparison of the report
    significant: bool
    error: str | None


@dataclass(frozen=True)
class SegmentLevel:
    level: str
    units: Mapping[str, int]
    srm_p_value: float | None
    srm_flagged: bool
    comparisons: tuple[SegmentComparison, ...]


@dataclass(frozen=True)
class Interaction:
    """Cochran's Q: does the metric's effect differ between the dimension's levels?"""

    metric: str
    variant: str
    q: float | None
    df: int
    p_value: float | None
    error: str | None


@dataclass(frozen=True)
class SegmentSection:
    dimension: str
    adjustment: str
    levels: tuple[SegmentLevel, ...]
    interactions: tuple[Interaction, ...]


@dataclass(frozen=True)
class QualityResult:
    """How closely one engine tracks another on the same live prompts, for one variant.

    ``comparison``: ``treatment_vs_control`` (the treatment's engine scores the control's
    completions) or ``reference`` (the variant's ``quality_reference`` engine scores the
    variant's own completions). ``method``: ``logprobs`` (teacher-forced: ``agreement`` is top-1
    agreement, ``kl`` the mean KL(generator || scorer) per token) or ``text`` (the tokenizers
    differ: ``agreement`` is a text similarity of the scorer's own greedy completion, ``kl`` None).
    Estimates are per-unit ratio means with their CIs; ``scored`` counts scored requests.
    """

    comparison: str
    variant: str
    generator: str
    scorer: str
    method: str
    scored: int
    units: int
    agreement: Estimate | None
    kl: Estimate | None


@dataclass(frozen=True)
class QualitySection:
    """Output quality on live traffic: ``sample`` is the experiment's ``quality_sample``;
    ``skipped`` and ``dropped`` count scoring jobs that did not run (no capacity, failed)."""

    sample: float | None
    results: tuple[QualityResult, ...]
    skipped: int
    dropped: int
    note: str
