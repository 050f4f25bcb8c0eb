"""Ship / keep running / roll back: the rule table the report applies.

Inputs are intervals, not p-values, so the same helper serves fixed-horizon
and sequential (always-valid) analyses: pass sequential CIs when the team
monitors continuously (the report's default), fixed ones at the planned end.

Every metric is oriented so that "improvement" is positive: for a
lower-is-better metric (latency, error rate) the interval is negated. With
improvement CI ``[lo, hi]`` and margin ``m`` (0 when None):

Guardrail status
    ``breached``      hi < -m              confidently worse by more than the margin
    ``ok``            margin set: lo > -m  non-inferiority shown
                      no margin: not breached
    ``inconclusive``  margin set, neither of the above
    ``unavailable``   the comparison returned an error
Primary status
    ``win`` lo > 0,  ``loss`` hi < 0,  ``flat`` otherwise,  ``unavailable``.

Rules, first match wins:

=====  ================================================  ===============
 #     condition                                         recommendation
=====  ================================================  ===============
 1     any guardrail ``breached``                        roll back
 2     primary ``loss``                                  roll back
 3     SRM flagged (blocks ship)                         keep running
 4     primary ``unavailable``                           keep running
 5     primary ``win`` and every guardrail ``ok``        ship
 6     primary ``win``, some guardrail not ``ok``        keep running
 7     primary ``flat`` and planned sample reached       roll back
 8     primary ``flat`` otherwise                        keep running
=====  ================================================  ===============

Rule 7 keeps the control when the experiment reached the units needed for its
minimum detectable effect without showing an improvement ("no evidence the
change helps"). ``reasons`` lists one sentence per input that mattered.

Evidence from an analysis (:func:`metric_evidence`): without a margin only the sign matters,
and the absolute (sequential) CI decides it; a guardrail with a relative margin is judged on the
relative CI against that margin. Two constant arms (:func:`constant_difference`) give an exact
difference instead of "unavailable". Over several treatments, :func:`headline` picks the one
the report leads with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from ._common import MSG_ZERO_VARIANCE, Effect, check_finite, failure_code
from .analysis import MetricAnalysis
from .power import PowerResult
from .sequential import SequentialEffect
from .srm import SRMResult

__all__ = ["Action", "Headline", "MetricEvidence", "Recommendation", "constant_difference",
           "guardrail_status", "headline", "metric_evidence", "primary_status", "recommend"]

Action = Literal["ship", "keep running", "roll back"]


@dataclass(frozen=True)
class MetricEvidence:
    """An effect interval with its direction (and margin, for guardrails).

    ``margin`` is >= 0 and on the same scale as the interval (e.g. 0.05 for
    "at most 5% worse" on a relative lift). ``relative`` only affects wording.
    """

    name: str
    estimate: float | None
    ci_lower: float | None
    ci_upper: float | None
    higher_is_better: bool
    margin: float | None = None
    relative: bool = True
    error: str | None = None

    def __post_init__(self) -> None:
        if self.margin is not None and not check_finite(self.margin, "margin") >= 0:
            raise ValueError("margin must be >= 0")

    @classmethod
    def from_effect(cls, name: str, effect: Effect | SequentialEffect | None,
                    higher_is_better: bool, margin: float | None = None,
                    relative: bool = True, error: str | None = None) -> "MetricEvidence":
        """Build from a (sequential) effect; None becomes an unavailable metric."""
        if effect is None:
            return cls(name, None, None, None, higher_is_better, margin, relative,
                       error or "no estimate available")
        return cls(name, effect.estimate, effect.ci_lower, effect.ci_upper,
                   higher_is_better, margin, relative, error)

    def improvement(self) -> tuple[float, float] | None:
        """The CI oriented so that positive means better, or None."""
        if self.error is not None or self.ci_lower is None or self.ci_upper is None:
            return None
        if self.higher_is_better:
            return self.ci_lower, self.ci_upper
        return -self.ci_upper, -self.ci_lower

    def describe(self) -> str:
        if self.estimate is None or self.ci_lower is None or self.ci_upper is None:
            return f"{self.name}: {self.error}"
        f = (lambda x: f"{x:+.2%}") if self.relative else (lambda x: f"{x:+.4g}")
        return (f"{self.name} {f(self.estimate)} "
                f"[{f(self.ci_lower)}, {f(self.ci_upper)}]")


@dataclass(frozen=True)
class Recommendation:
    action: Action
    reasons: tuple[str, ...]
    primary_status: str
    guardrail_statuses: tuple[tuple[str, str], ...]


def guardrail_status(g: MetricEvidence) -> str:
    """``breached`` / ``ok`` / ``inconclusive`` / ``unavailable`` (see table)."""
    imp = g.improvement()
    if imp is None:
        return "unavailable"
    m = g.margin or 0.0
    if imp[1] < -m:
        return "breached"
    if g.margin is None or imp[0] > -m:
        return "ok"
    return "inconclusive"


def primary_status(p: MetricEvidence) -> str:
    """``win`` / ``loss`` / ``flat`` / ``unavailable`` (see table)."""
    imp = p.improvement()
    if imp is None:
        return "unavailable"
    return "win" if imp[0] > 0 else "loss" if imp[1] < 0 else "flat"


_GUARD_TEXT = {
    "breached": "guardrail breached: {d} is worse than allowed",
    "ok": "guardrail ok: {d}",
    "inconclusive": "guardrail not yet shown non-inferior: {d}",
    "unavailable": "guardrail unavailable: {d}",
}


def _power_reason(power: PowerResult | None) -> str | None:
    if power is None or power.required_per_variant is None:
        return None if power is None else f"power: {power.error}"
    text = (f"power: {power.current_per_variant} of {power.required_per_variant} units "
            f"per variant needed for the minimum detectable effect")
    if power.days_to_go is not None and not power.enough_units:
        text += f" (about {_duration(power.days_to_go)} more at the current rate)"
    return text


def _duration(days: float) -> str:
    if days >= 1:
        return f"{days:.1f} days"
    if days * 24 >= 1:
        return f"{days * 24:.1f} hours"
    minutes = max(round(days * 1440), 1)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def recommend(primary: MetricEvidence, guardrails: Sequence[MetricEvidence] = (),
              srm: SRMResult | None = None,
              power: PowerResult | None = None) -> Recommendation:
    """Apply the rule table above; ``power`` is the primary metric's plan."""
    p_status = primary_status(primary)
    g_statuses = tuple((g.name, guardrail_status(g)) for g in guardrails)
    reasons = [_GUARD_TEXT[s].format(d=g.describe()) for g, (_, s) in zip(guardrails, g_statuses)]
    reasons.insert(0, f"primary metric {p_status}: {primary.describe()}")
    if srm is not None and srm.flagged:
        reasons.insert(0, srm.message)
    power_text = _power_reason(power)
    if power_text:
        reasons.append(power_text)
    statuses = {s for _, s in g_statuses}
    if "breached" in statuses or p_status == "loss":
        action: Action = "roll back"
    elif (srm is not None and srm.flagged) or p_status == "unavailable":
        action = "keep running"
    elif p_status == "win":
        action = "ship" if statuses <= {"ok"} else "keep running"
    else:
        action = "roll back" if power is not None and power.enough_units else "keep running"
    return Recommendation(action, tuple(reasons), p_status, g_statuses)


def metric_evidence(name: str, higher_is_better: bool, analysis: MetricAnalysis,
                    margin: float | None) -> MetricEvidence:
    """Sequential evidence of one metric for the rules above (``margin``: a guardrail's
    relative margin, None for the primary metric and for guardrails without one).

    Without a margin only the sign matters, and the absolute CI decides it: it has the same sign
    as the relative lift but no delta-method blow-up near a zero baseline (an error rate of 1%
    vs 20% is unmistakable in absolute terms, yet its relative CI can span zero).
    """
    seq = analysis.sequential
    exact = constant_difference(name, higher_is_better, analysis, margin)
    if exact is not None:
        return exact
    if margin is not None:
        error = seq.error or analysis.comparison.relative_error
        return MetricEvidence.from_effect(name, seq.relative, higher_is_better, margin, True, error)
    return MetricEvidence.from_effect(f"{name} difference", seq.absolute, higher_is_better, None,
                                      False, seq.error)


def constant_difference(name: str, higher_is_better: bool, analysis: MetricAnalysis,
                        margin: float | None) -> MetricEvidence | None:
    """Both arms constant (e.g. no errors at all in either): the difference is known exactly.

    No test is possible, yet the evidence is complete: an error rate of 0 against 0 is no harm,
    so the guardrail holds instead of being "unavailable" forever.
    """
    c = analysis.comparison
    if (failure_code(c.error) != MSG_ZERO_VARIANCE.code or margin is not None
            or c.control_mean is None or c.treatment_mean is None):
        return None
    d = c.treatment_mean - c.control_mean
    return MetricEvidence(name, d, d, d, higher_is_better, None, False)


@dataclass(frozen=True)
class Headline:
    """The one recommendation a report leads with (``variant`` None: no treatment)."""

    action: Action
    variant: str | None
    reasons: tuple[str, ...]


def headline(recs: Sequence[tuple[str, Recommendation]]) -> Headline:
    """A shipping treatment if any, else keep running if any, else roll back."""
    for action in ("ship", "keep running", "roll back"):
        for variant, rec in recs:
            if rec.action == action:
                return Headline(rec.action, variant, rec.reasons)
    return Headline("keep running", None, ("no treatment variant",))
