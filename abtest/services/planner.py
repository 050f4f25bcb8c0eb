"""Power planner: how many units, and how many days, an experiment needs for one metric.

A plan is sized for one metric of the control, known either from the caller (``kind`` with its
``baseline`` and, for a mean, ``sd`` or ``variance``) or from the history of a running
experiment (``experiment`` and ``metric``: the control's estimate and per-unit variance from the
report's own queries, see :func:`abtest.reports.baseline.metric_baseline`). Normal approximation,
equal units per variant (the formulas of :mod:`abtest.stats.power`):

Superiority (``mde``), two-sided at the comparison level ``a``
    ``n`` is the smallest size with ``Phi(d / se - z) + Phi(-d / se - z) >= power``,
    ``se = sqrt(V / n)``, ``z = Phi^-1(1 - a / 2)``, ``d`` the absolute effect
    (``mde * |baseline|`` when relative). ``V`` is the sum of both variants' per-unit variances:
    ``p1 (1 - p1) + p2 (1 - p2)`` for a binary metric (unpooled; ``p2 = p1 +/- d`` in the
    metric's direction), ``2 sigma^2`` for a mean (a ratio metric's sigma^2 is its delta-method
    per-unit variance).
Non-inferiority (``margin``), one-sided at level ``a``, sized for a true difference of 0
    ``n = (z_{1-a} + Phi^-1(power))^2 V / M^2`` with ``V = 2 p1 (1 - p1)`` (binary) or
    ``2 sigma^2`` (mean) and ``M`` the absolute margin. ``direction`` says which side is the
    harm (``decrease``: lower is worse); the size is the same either way.
Several treatments (``variants`` = k + 1)
    each of the k treatments is compared with the control at ``a = alpha / k`` (Bonferroni:
    the most stringent step of the report's Holm-Bonferroni, so the plan holds whatever Holm
    rejects first). The total is ``n (k + 1)`` units.
Days
    ``ceil(total / (daily_units * coverage))`` with ``daily_units`` the units arriving per day
    before coverage; from a running experiment, its units first exposed per day over its last
    ``traffic_days`` days (at its own coverage, rescaled when ``coverage`` is given).

``parse_plan_request(payload)`` checks a JSON payload (:class:`~abtest.errors.ValidationError`
naming the field); ``plan(session, request)`` computes the :class:`Plan` (``session`` is needed
only for a plan from history; :class:`~abtest.errors.NotFound` for an unknown experiment).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import ValidationError
from ..stats.power import noninferiority_units_per_variant, required_units_per_variant
from ..validation import Fields

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["PlanRequest", "Plan", "parse_plan_request", "plan", "compute_plan", "MAX_VARIANTS"]

KINDS = ("binary", "mean")
DIRECTIONS = ("increase", "decrease")
MAX_VARIANTS = 20
MAX_TRAFFIC_DAYS = 90
_MAX_UNITS = 1e15  # a plan beyond this many units per variant is refused (and int-exact as a float)
_FIELDS = ("kind", "baseline", "sd", "variance", "experiment", "metric", "mde", "margin", "relative",
           "direction", "alpha", "power", "variants", "daily_units", "coverage", "traffic_days")
_GIVEN = ("kind", "baseline", "sd", "variance")


@dataclass(frozen=True)
class PlanRequest:
    """What a plan is asked for (see the module docstring). ``test`` is ``superiority`` (``effect``
    is the minimum detectable effect) or ``non_inferiority`` (``effect`` is the margin)."""

    test: str
    effect: float
    relative: bool = True
    alpha: float = 0.05
    power: float = 0.8
    variants: int = 2
    kind: str | None = None
    baseline: float | None = None
    variance: float | None = None
    experiment: str | None = None
    metric: str | None = None
    direction: str | None = None
    daily_units: float | None = None
    coverage: float | None = None
    traffic_days: int = 7


@dataclass(frozen=True)
class Plan:
    """A sample-size plan: ``units_per_variant`` (each of ``variants``), ``total_units`` and
    ``days`` at ``daily_units * coverage`` enrolled units a day (None without traffic); the
    control's ``baseline`` and per-unit ``variance`` it was sized on, the ``absolute_effect``
    (effect or margin in metric units), the per-comparison level, and the request echoed."""

    request: PlanRequest
    test: str
    kind: str
    direction: str
    baseline: float
    variance: float
    absolute_effect: float
    sides: int
    comparisons: int
    correction: str
    comparison_alpha: float
    units_per_variant: int
    total_units: int
    daily_units: float | None
    coverage: float | None
    days: int | None
    source: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["inputs"] = {k: v for k, v in out.pop("request").items() if v is not None}
        return {k: out[k] for k in ("units_per_variant", "total_units", "days", "test", "kind", "direction",
                                    "baseline", "variance", "absolute_effect", "sides", "comparisons",
                                    "correction", "comparison_alpha", "daily_units", "coverage", "source",
                                    "inputs")}


def parse_plan_request(payload: Any) -> PlanRequest:
    """Check a JSON payload; :class:`ValidationError` naming the first bad field."""
    f = Fields(payload, _FIELDS)
    has_mde, has_margin = _given(payload, "mde"), _given(payload, "margin")
    if has_mde == has_margin:
        raise ValidationError("mde", "give exactly one of mde (superiority) and margin (non-inferiority)")
    name = "mde" if has_mde else "margin"
    effect = f.num(name)
    if not effect > 0:
        raise ValidationError(name, "must be > 0")
    alpha = f.num("alpha", 0.05)
    if not 0 < alpha <= 0.5:
        raise ValidationError("alpha", "must be in (0, 0.5]")
    power = f.num("power", 0.8)
    if not 0.5 < power < 1:
        raise ValidationError("power", "must be in (0.5, 1)")
    variants = f.num("variants", 2, lo=2, hi=MAX_VARIANTS, integer=True)
    relative = f.bool("relative", True)
    direction = f.choice("direction", DIRECTIONS) if _given(payload, "direction") else None
    daily = f.num("daily_units", None)
    if daily is not None and not daily > 0:
        raise ValidationError("daily_units", "must be > 0")
    coverage = f.num("coverage", None)
    if coverage is not None and not 0 < coverage <= 1:
        raise ValidationError("coverage", "must be in (0, 1]")
    traffic_days = f.num("traffic_days", 7, lo=1, hi=MAX_TRAFFIC_DAYS, integer=True)
    common = dict(test="superiority" if has_mde else "non_inferiority", effect=float(effect), relative=relative,
                  alpha=float(alpha), power=float(power), variants=int(variants), direction=direction,
                  daily_units=None if daily is None else float(daily),
                  coverage=None if coverage is None else float(coverage), traffic_days=int(traffic_days))
    if _given(payload, "experiment"):
        key = f.str("experiment", max_len=100)
        metric = f.str("metric", max_len=100)
        for given in _GIVEN:
            if _given(payload, given):
                raise ValidationError(given, "comes from the experiment's history: leave it out or leave out "
                                             "experiment")
        return PlanRequest(experiment=key, metric=metric, **common)  # type: ignore[arg-type]
    if _given(payload, "metric"):
        raise ValidationError("experiment", "is required with metric (the metric's history is read from it)")
    kind = f.choice("kind", KINDS)
    baseline = f.num("baseline")
    variance = None
    if kind == "binary":
        if not 0 < baseline < 1:
            raise ValidationError("baseline", "a binary metric's baseline rate must be in (0, 1)")
        for other in ("sd", "variance"):
            if _given(payload, other):
                raise ValidationError(other, "a binary metric's variance follows from its baseline rate")
        variance = baseline * (1.0 - baseline)
    else:
        has_sd, has_var = _given(payload, "sd"), _given(payload, "variance")
        if has_sd == has_var:
            raise ValidationError("sd", "give exactly one of sd and variance for a mean metric")
        spread = "sd" if has_sd else "variance"
        value = f.num(spread)
        if not value > 0:
            raise ValidationError(spread, "must be > 0")
        variance = value * value if has_sd else value
        if not math.isfinite(variance):
            raise ValidationError(spread, "is too large to plan on")
        if relative and baseline == 0:
            raise ValidationError("baseline", "must not be 0 for a relative effect (set relative: false)")
    return PlanRequest(kind=kind, baseline=float(baseline), variance=float(variance), **common)  # type: ignore[arg-type]


def _given(payload: Any, key: str) -> bool:
    """A field is given when present and not null (null means "use the default")."""
    return payload.get(key) is not None


def compute_plan(request: PlanRequest, kind: str, baseline: float, variance: float, direction: str,
                 daily_units: float | None, coverage: float | None,
                 source: dict[str, Any] | None = None) -> Plan:
    """The plan for a control of ``kind`` with ``baseline`` and per-unit ``variance`` (pure)."""
    name = "mde" if request.test == "superiority" else "margin"
    delta = request.effect * abs(baseline) if request.relative else request.effect
    if not delta > 0:
        raise ValidationError(name, f"a relative {name} of a metric whose baseline is 0 is 0: give it in "
                                    "metric units (relative: false)")
    if not variance > 0:
        raise ValidationError("metric" if request.experiment else "variance",
                              "the control's per-unit variance is 0: no test can be sized on it")
    if not (math.isfinite(delta) and math.isfinite(variance)):
        raise ValidationError("metric" if request.experiment else "baseline", "is too large to plan on")
    k = request.variants - 1
    a = request.alpha / k
    if request.test == "superiority":
        v_sum = 2.0 * variance
        if kind == "binary":
            p2 = baseline + (delta if direction == "increase" else -delta)
            if not 0 < p2 < 1:
                raise ValidationError("mde", f"the rate it is sized for, {p2:.6g}, is outside (0, 1)")
            v_sum = baseline * (1.0 - baseline) + p2 * (1.0 - p2)
        n = required_units_per_variant(delta, v_sum, a, request.power)
    else:
        n = noninferiority_units_per_variant(delta, 2.0 * variance, a, request.power)
    if not n < _MAX_UNITS:
        raise ValidationError(name, f"is too small for any feasible experiment ({n:.3g} units per variant)")
    units = int(n)
    total = units * request.variants
    days = None
    if daily_units is not None:
        per_day = daily_units * (1.0 if coverage is None else coverage)
        days = int(math.ceil(total / per_day - 1e-9))
    return Plan(request, request.test, kind, direction, baseline, variance, delta,
                2 if request.test == "superiority" else 1, k, "bonferroni" if k > 1 else "none", a,
                units, total, daily_units, coverage, days, source or {"type": "given"})


def plan(session: Session | None, request: PlanRequest, now: datetime | None = None) -> Plan:
    """The plan of ``request``; a plan from history reads the experiment through ``session``."""
    direction = request.direction or "increase"
    if request.experiment is None:
        assert request.kind is not None and request.baseline is not None and request.variance is not None
        return compute_plan(request, request.kind, request.baseline, request.variance, direction,
                            request.daily_units, request.coverage)
    if session is None:
        raise ValueError("a plan from an experiment's history needs a database session")
    from ..reports.baseline import metric_baseline

    found = metric_baseline(session, request.experiment, request.metric or "", request.traffic_days, now)
    daily, coverage = request.daily_units, request.coverage
    if daily is None and found.daily_units is not None:
        # measured at the experiment's coverage: units arriving before coverage
        daily = found.daily_units / found.coverage if found.coverage > 0 else None
        coverage = found.coverage if coverage is None else coverage
    source = {"type": "history", "experiment": found.experiment, "metric": found.metric,
              "phase": found.phase, "control": found.control, "control_units": found.units,
              "measured_daily_units": found.daily_units, "traffic_days": found.traffic_days}
    return compute_plan(request, found.kind, found.mean, found.variance, request.direction or found.direction,
                        daily, coverage, source)
