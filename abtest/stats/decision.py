"""Ship / keep running / keep control / roll back: the rule table the report applies.

Inputs are intervals, not p-values, so the same helper serves fixed-horizon
and sequential (always-valid) analyses: pass sequential CIs when the team
monitors continuously (the report's default), fixed ones at the planned end.

Every metric is oriented so that "improvement" is positive: for a
lower-is-better metric (latency, error rate) the interval is negated. With
improvement CI ``[lo, hi]`` and margin ``m`` (0 when None):

Guardrail status (non-inferiority, the default test of a guardrail)
    ``breached``      hi < -m              confidently worse by more than the margin
    ``ok``            margin set: lo > -m  non-inferiority shown
                      no margin: not breached
    ``inconclusive``  margin set, neither of the above
    ``unavailable``   the comparison returned an error
Guardrail status with ``test="equivalence"`` (two one-sided tests, margin m > 0)
    ``ok``            -m < lo and hi < m   the difference lies within +/- m
    ``breached``      lo > m or hi < -m    the interval lies entirely outside +/- m
    ``inconclusive``  otherwise
Guardrail status with ``test="floor"`` (a level, higher is better, e.g. top-1 agreement with a
quality reference of at least ``floor``; its interval is a fixed-horizon CI of the level)
    ``ok``            lo >= floor          the level is shown to reach the floor
    ``breached``      hi < floor           confidently below it
    ``inconclusive``  otherwise
Primary status, ``decision="superiority"`` (margin None)
    ``win`` lo > 0,  ``loss`` hi < 0,  ``flat`` otherwise,  ``unavailable``.
Primary status, ``decision="non_inferiority"`` (relative margin m > 0)
    ``non_inferior`` lo > -m,  ``inferior`` hi < -m,  ``inconclusive`` otherwise,  ``unavailable``.

Rules, first match wins (``good`` is ``win`` or ``non_inferior``, ``bad`` is ``loss`` or
``inferior``):

=====  ================================================  ===============
 #     condition                                         recommendation
=====  ================================================  ===============
 1     any guardrail ``breached``                        roll back
 2     primary ``bad``                                   roll back
 3     SRM flagged (blocks ship)                         keep running
 4     primary ``unavailable``                           keep running
 5     primary ``good`` and every guardrail ``ok``       ship
 6     primary ``good``, some guardrail not ``ok``       keep running
 7     superiority: ``flat`` and planned sample reached  keep control
 8     otherwise (``flat``, ``inconclusive``)            keep running
=====  ================================================  ===============

Rule 7 is a conclusion, not an alarm: the experiment reached the units needed for its minimum
detectable effect without showing an improvement, so the control stays. ``roll back`` means
confident harm (the primary metric, or a guardrail beyond its margin). ``reasons`` lists one
sentence per input that mattered, in plain words with units (:mod:`abtest.stats.wording`); the
power plan is worded only while the experiment keeps running.

Evidence from an analysis (:func:`metric_evidence`): without a margin only the sign matters,
and the absolute (sequential) CI decides it; with a relative margin (a non-inferiority primary,
a guardrail with a margin, an equivalence guardrail) the relative CI is judged against that
margin. Two constant arms (:func:`constant_difference`) give an exact difference instead of
"unavailable". Over several treatments, :func:`headline` picks the one the report leads with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from . import wording as W
from ._common import MSG_ZERO_VARIANCE, Effect, check_finite, failure_code
from .analysis import MetricAnalysis
from .power import PowerResult
from .sequential import SequentialEffect
from .srm import SRMResult

__all__ = ["Action", "DECISIONS", "Headline", "MetricEvidence", "Recommendation", "constant_difference",
           "guardrail_status", "headline", "metric_evidence", "primary_status", "recommend"]

Action = Literal["ship", "keep running", "keep control", "roll back"]
DECISIONS = ("superiority", "non_inferiority")
_ORDER: tuple[Action, ...] = ("ship", "keep running", "keep control", "roll back")


@dataclass(frozen=True)
class MetricEvidence:
    """An effect interval with its direction (and margin, for guardrails and a non-inferiority
    primary).

    ``margin`` is >= 0 and on the same scale as the interval (e.g. 0.05 for "at most 5% worse"
    on a relative lift). ``relative`` says the interval is a relative lift; ``unit`` (``share``,
    ``ms``, ``count``, ``number``, ...) words an absolute one. ``test`` is None or
    ``"equivalence"`` (guardrails). ``control_mean``/``treatment_mean`` word a constant
    difference; ``alpha`` and ``interval`` name the interval ("95 % always-valid interval").
    """

    name: str
    estimate: float | None
    ci_lower: float | None
    ci_upper: float | None
    higher_is_better: bool
    margin: float | None = None
    relative: bool = True
    error: str | None = None
    unit: str = "number"
    test: str | None = None
    control_mean: float | None = None
    treatment_mean: float | None = None
    alpha: float = 0.05
    interval: str = "always-valid"
    floor: float | None = None  # test "floor": the interval is a level that must reach this

    def __post_init__(self) -> None:
        if self.margin is not None and not check_finite(self.margin, "margin") >= 0:
            raise ValueError("margin must be >= 0")
        if self.test not in (None, "equivalence", "floor"):
            raise ValueError(f"test must be None, 'equivalence' or 'floor', got {self.test!r}")
        if (self.test == "floor") != (self.floor is not None) or (self.test == "floor" and not self.higher_is_better):
            raise ValueError("a floor test (a level that must reach its floor, higher is better) needs a floor, "
                             "and only a floor test has one")
        if self.test == "equivalence" and not (self.margin or 0) > 0:
            raise ValueError("an equivalence test needs a margin > 0")

    @classmethod
    def from_effect(cls, name: str, effect: Effect | SequentialEffect | None,
                    higher_is_better: bool, margin: float | None = None,
                    relative: bool = True, error: str | None = None,
                    **extra: object) -> "MetricEvidence":
        """Build from a (sequential) effect; None becomes an unavailable metric. ``extra``:
        the wording fields (``unit``, ``test``, ``alpha``, ...)."""
        if effect is None:
            return cls(name, None, None, None, higher_is_better, margin, relative,
                       error or "no estimate available", **extra)  # type: ignore[arg-type]
        return cls(name, effect.estimate, effect.ci_lower, effect.ci_upper,
                   higher_is_better, margin, relative, error, **extra)  # type: ignore[arg-type]

    def improvement(self) -> tuple[float, float] | None:
        """The CI oriented so that positive means better, or None."""
        if self.error is not None or self.ci_lower is None or self.ci_upper is None:
            return None
        if self.higher_is_better:
            return self.ci_lower, self.ci_upper
        return -self.ci_upper, -self.ci_lower

    def interval_text(self) -> str:
        """``95 % always-valid interval -1.1 % to +6.3 %`` (needs an interval)."""
        lo, hi = float(self.ci_lower or 0.0), float(self.ci_upper or 0.0)
        places = W.decimals(lo, hi, self.unit, self.relative)
        return (f"{W.level(self.alpha)} {self.interval} interval "
                f"{W.span(lo, hi, self.unit, self.relative, places)}")

    def describe(self) -> str:
        """The effect in plain words, e.g. ``conversion +7.3 points (95 % always-valid interval
        +0.7 to +13.9 points)``; an exact (constant) difference as ``error_rate unchanged: 0.0 %
        vs 0.0 %``."""
        if self.estimate is None or self.ci_lower is None or self.ci_upper is None:
            return f"{self.name}: {self.error}"
        if self.ci_lower == self.ci_upper and self.control_mean is not None and (
                self.treatment_mean is not None):
            places = W.decimals(0.0, 0.0, self.unit, False)
            c = W.amount(self.control_mean, self.unit, places)
            t = W.amount(self.treatment_mean, self.unit, places)
            if self.control_mean == self.treatment_mean:
                return f"{self.name} unchanged: {c} vs {t} (no variation in either variant)"
            return f"{self.name} {t} vs {c} in control (no variation in either variant)"
        places = W.decimals(self.ci_lower, self.ci_upper, self.unit, self.relative)
        return (f"{self.name} {W.value(self.estimate, self.unit, self.relative, places)} "
                f"({self.interval_text()})")


@dataclass(frozen=True)
class Recommendation:
    """``primary`` is the evidence that decided (its interval, scale and margin)."""

    action: Action
    reasons: tuple[str, ...]
    primary_status: str
    guardrail_statuses: tuple[tuple[str, str], ...]
    decision: str = "superiority"
    primary: MetricEvidence | None = None


def guardrail_status(g: MetricEvidence) -> str:
    """``breached`` / ``ok`` / ``inconclusive`` / ``unavailable`` (see table)."""
    imp = g.improvement()
    if imp is None:
        return "unavailable"
    if g.test == "floor":  # a level, e.g. top-1 agreement with a reference of at least 0.97
        lo, hi = imp  # higher is better: the level itself
        return "ok" if lo >= g.floor else "breached" if hi < g.floor else "inconclusive"  # type: ignore[operator]
    m = g.margin or 0.0
    if g.test == "equivalence":
        if -m < imp[0] and imp[1] < m:
            return "ok"
        return "breached" if imp[0] > m or imp[1] < -m else "inconclusive"
    if imp[1] < -m:
        return "breached"
    if g.margin is None or imp[0] > -m:
        return "ok"
    return "inconclusive"


def primary_status(p: MetricEvidence, decision: str = "superiority") -> str:
    """Superiority: ``win`` / ``loss`` / ``flat``; non-inferiority: ``non_inferior`` /
    ``inferior`` / ``inconclusive``; ``unavailable`` for both (see table)."""
    decision = _check_decision(decision)
    imp = p.improvement()
    if imp is None:
        return "unavailable"
    if decision == "non_inferiority":
        if not (p.margin or 0.0) > 0:
            raise ValueError("a non-inferiority decision needs a primary margin > 0")
        m = float(p.margin or 0.0)
        return "non_inferior" if imp[0] > -m else "inferior" if imp[1] < -m else "inconclusive"
    return "win" if imp[0] > 0 else "loss" if imp[1] < 0 else "flat"


def _check_decision(decision: str) -> str:
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    return decision


def _guard_text(g: MetricEvidence, status: str) -> str:
    if g.test == "floor" and status != "unavailable":
        lo, hi, places = float(g.ci_lower or 0.0), float(g.ci_upper or 0.0), 1
        d = (f"{g.name} {W.amount(float(g.estimate or 0.0), g.unit, places)} ({W.level(g.alpha)} {g.interval} "
             f"interval {W.amount(lo, g.unit, places)} to {W.amount(hi, g.unit, places)})")
        floor = W.amount(float(g.floor or 0.0), g.unit, places)
        return {"ok": f"guardrail ok: {d} is at least {floor}",
                "breached": f"guardrail breached: {d} is below {floor}",
                "inconclusive": f"guardrail not yet shown to reach {floor}: {d}"}[status]
    d = g.describe()
    if status == "unavailable":
        return f"guardrail unavailable: {d}"
    m = W.percent(g.margin or 0.0)
    if g.test == "equivalence":
        return {"ok": f"guardrail ok: {d} lies within the equivalence margin of +/-{m}",
                "breached": f"guardrail breached: {d} lies outside the equivalence margin of +/-{m}",
                "inconclusive": f"guardrail not yet shown equivalent: {d}, margin +/-{m}"}[status]
    if g.margin is not None:
        d = f"{d}, margin {m}"
    return {"ok": f"guardrail ok: {d}", "breached": f"guardrail breached: {d} is worse than allowed",
            "inconclusive": f"guardrail not yet shown non-inferior: {d}"}[status]


def _primary_text(p: MetricEvidence, status: str, decision: str, who: str) -> str:
    if decision == "superiority" or status == "unavailable":
        return f"primary metric {status}: {p.describe()}"
    direction = "" if p.higher_is_better else " (lower is better)"
    places = W.decimals(float(p.ci_lower or 0), float(p.ci_upper or 0), p.unit, p.relative)
    figures = (f"margin {W.percent(p.margin or 0.0)}, {p.interval_text()} "
               f"(estimate {W.value(float(p.estimate or 0), p.unit, p.relative, places)})")
    verdict = {"non_inferior": "is non-inferior on", "inferior": "is worse than the margin allows on",
               "inconclusive": "is not yet shown non-inferior on"}[status]
    return f"{who} {verdict} {p.name}{direction}: {figures}"


def _power_reason(power: PowerResult | None, primary: MetricEvidence, decision: str) -> str | None:
    if power is None:
        return None
    if power.required_per_variant is None:
        return f"sample size plan unavailable: {power.error}"
    cur, req = power.current_per_variant, power.required_per_variant
    goal = (f"to show non-inferiority at the {W.percent(primary.margin or 0.0)} margin "
            f"if the true difference is 0" if decision == "non_inferiority"
            else "to detect the minimum detectable effect")
    if power.enough_units:
        return (f"the planned sample is reached ({cur:,} of {req:,} units per variant {goal}); "
                f"more data would narrow the interval")
    text = f"about {req - cur:,} more units per variant needed {goal} ({cur:,} of {req:,} so far"
    if power.days_to_go is not None:
        text += f"; about {_duration(power.days_to_go)} at the current rate"
    text += ")"
    if power.fixed_horizon_per_variant is not None:
        text += (f"; a single fixed-horizon look at the end would need "
                 f"{power.fixed_horizon_per_variant:,} per variant")
    return text


def _duration(days: float) -> str:
    if days >= 1:
        return f"{days:.1f} days"
    if days * 24 >= 1:
        return f"{days * 24:.1f} hours"
    minutes = max(round(days * 1440), 1)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def recommend(primary: MetricEvidence, guardrails: Sequence[MetricEvidence] = (),
              srm: SRMResult | None = None, power: PowerResult | None = None,
              decision: str = "superiority", variant: str | None = None) -> Recommendation:
    """Apply the rule table above; ``power`` is the primary metric's plan (for a
    non-inferiority decision, :func:`abtest.stats.noninferiority_plan`), ``variant`` names the
    treatment in the reasons."""
    decision = _check_decision(decision)
    p_status = primary_status(primary, decision)
    g_statuses = tuple((g.name, guardrail_status(g)) for g in guardrails)
    statuses = {s for _, s in g_statuses}
    srm_flagged = srm is not None and srm.flagged
    if "breached" in statuses or p_status in ("loss", "inferior"):
        action: Action = "roll back"
    elif srm_flagged or p_status == "unavailable":
        action = "keep running"
    elif p_status in ("win", "non_inferior"):
        action = "ship" if statuses <= {"ok"} else "keep running"
    elif decision == "superiority" and power is not None and power.enough_units:
        action = "keep control"
    else:
        action = "keep running"
    reasons = [_primary_text(primary, p_status, decision, variant or "the treatment")]
    reasons += [_guard_text(g, s) for g, (_, s) in zip(guardrails, g_statuses)]
    if srm_flagged:
        reasons.insert(0, srm.message)  # type: ignore[union-attr]
    if action == "keep control":
        reasons.insert(0, f"no detectable effect on {primary.name} at the planned sample: keep the control")
    power_text = _power_reason(power, primary, decision) if action == "keep running" else None
    if power_text:
        reasons.append(power_text)
    return Recommendation(action, tuple(reasons), p_status, g_statuses, decision, primary)


def metric_evidence(name: str, higher_is_better: bool, analysis: MetricAnalysis,
                    margin: float | None, test: str | None = None,
                    unit: str = "number") -> MetricEvidence:
    """Sequential evidence of one metric for the rules above (``margin``: a relative margin,
    for a non-inferiority primary and guardrails that have one; None for a superiority primary
    and for guardrails without one; ``test``: None or ``"equivalence"``; ``unit`` words it).

    Without a margin only the sign matters, and the absolute CI decides it: it has the same sign
    as the relative lift but no delta-method blow-up near a zero baseline (an error rate of 1%
    vs 20% is unmistakable in absolute terms, yet its relative CI can span zero).
    """
    seq = analysis.sequential
    exact = constant_difference(name, higher_is_better, analysis, margin, unit)
    if exact is not None:
        return exact
    c = analysis.comparison
    extra = dict(unit=unit, control_mean=c.control_mean, treatment_mean=c.treatment_mean,
                 alpha=seq.alpha)
    if margin is not None:
        error = seq.error or analysis.comparison.relative_error
        return MetricEvidence.from_effect(name, seq.relative, higher_is_better, margin, True, error,
                                          test=test, **extra)
    return MetricEvidence.from_effect(name, seq.absolute, higher_is_better, None, False, seq.error,
                                      **extra)


def constant_difference(name: str, higher_is_better: bool, analysis: MetricAnalysis,
                        margin: float | None, unit: str = "number") -> MetricEvidence | None:
    """Both arms constant (e.g. no errors at all in either): the difference is known exactly.

    No test is possible, yet the evidence is complete: an error rate of 0 against 0 is no harm,
    so the guardrail holds instead of being "unavailable" forever.
    """
    c = analysis.comparison
    if (failure_code(c.error) != MSG_ZERO_VARIANCE.code or margin is not None
            or c.control_mean is None or c.treatment_mean is None):
        return None
    d = c.treatment_mean - c.control_mean
    return MetricEvidence(name, d, d, d, higher_is_better, None, False, unit=unit,
                          control_mean=c.control_mean, treatment_mean=c.treatment_mean,
                          alpha=analysis.sequential.alpha, interval="exact")


@dataclass(frozen=True)
class Headline:
    """The one recommendation a report leads with (``variant`` None: no treatment)."""

    action: Action
    variant: str | None
    reasons: tuple[str, ...]


def headline(recs: Sequence[tuple[str, Recommendation]]) -> Headline:
    """The first treatment with the best action in the order ship, keep running, keep control,
    roll back."""
    for action in _ORDER:
        for variant, rec in recs:
            if rec.action == action:
                return Headline(rec.action, variant, rec.reasons)
    return Headline("keep running", None, ("no treatment variant",))
