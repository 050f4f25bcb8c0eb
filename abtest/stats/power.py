"""Power analysis: how many units, and how many more days.

Two-sided test at level ``alpha`` of an absolute effect ``delta`` with
per-unit variances ``v_c``, ``v_t`` and ``n`` units per variant, using the
normal approximation (the t correction is negligible at experiment sizes):

    se(n)  = sqrt((v_c + v_t) / n)
    power  = Phi(|delta| / se - z) + Phi(-|delta| / se - z),   z = Phi^-1(1 - alpha/2)
    n      = smallest n with power(n) >= target
           ~ (z + Phi^-1(target))^2 (v_c + v_t) / delta^2

This is statsmodels' ``NormalIndPower`` with ``effect_size = delta / sigma``
when ``v_c == v_t == sigma^2`` (``ratio = 1``). A relative minimum detectable
effect (MDE) is converted with ``delta = mde * |control mean|``.
``days_to_go`` assumes units keep arriving at the observed daily rate.

Non-inferiority at margin ``M`` (absolute; a relative margin is ``M = m * |control mean|``),
sized for a true difference of 0:

Fixed horizon, one-sided level ``a``
    ``power = Phi(M / se(n) - z_{1-a})``, so ``n = (z_{1-a} + Phi^-1(target))^2 (v_c + v_t) / M^2``
    (statsmodels' ``NormalIndPower(effect_size=M / sigma, alternative="larger")``).
Always-valid (what the report decides on)
    non-inferiority is declared when the lower end of the two-sided confidence sequence,
    ``D - radius(n)``, exceeds ``-M``; with ``D ~ N(0, se(n)^2)`` the chance of that is
    ``Phi((M - radius(n)) / se(n))``, and ``n`` is the smallest size where it reaches the target
    (radius of :func:`abtest.stats.sequential.sequential_radius` at ``N = 2 n`` units).

:func:`noninferiority_plan` reports the always-valid size as ``required_per_variant`` and the
fixed-horizon size of the matching one-sided test (level ``alpha / 2``, the lower end of a
two-sided ``1 - alpha`` interval) as ``fixed_horizon_per_variant``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import optimize
from scipy import stats as sps

from ._common import MSG_TOO_FEW_UNITS, MSG_ZERO_BASELINE, check_alpha, check_probability
from .sequential import DEFAULT_N_STAR, sequential_radius
from .sufficient import Estimable

__all__ = ["PowerResult", "achieved_power", "noninferiority_plan", "noninferiority_units_per_variant",
           "power_analysis", "required_units_per_variant", "sequential_noninferiority_power",
           "sequential_noninferiority_units"]


@dataclass(frozen=True)
class PowerResult:
    """Sample-size plan for one metric.

    ``absolute_mde`` is the effect (metric units) the plan is sized for;
    ``required_per_variant`` units per variant reach ``target_power``;
    ``achieved_power`` is the power at the current (smallest) arm size;
    ``days_to_go`` is None when no daily rate is known. ``kind`` is ``superiority`` (sized for
    the minimum detectable effect) or ``non_inferiority`` (``absolute_mde`` is then the margin
    in metric units, ``required_per_variant`` the always-valid size and
    ``fixed_horizon_per_variant`` the one-sided fixed-horizon size).
    """

    absolute_mde: float | None
    alpha: float
    target_power: float
    required_per_variant: int | None
    current_per_variant: int
    achieved_power: float | None
    days_to_go: float | None
    error: str | None = None
    kind: str = "superiority"
    fixed_horizon_per_variant: int | None = None

    @property
    def enough_units(self) -> bool:
        return self.required_per_variant is not None and (
            self.current_per_variant >= self.required_per_variant)


def achieved_power(delta: float, variance_sum: float, n_per_variant: float,
                   alpha: float = 0.05) -> float:
    """Two-sided power with ``n_per_variant`` units per arm; ``variance_sum = v_c + v_t``."""
    alpha = check_alpha(alpha)
    if n_per_variant <= 0 or variance_sum <= 0:
        raise ValueError("n_per_variant and variance_sum must be > 0")
    z = sps.norm.ppf(1.0 - alpha / 2.0)
    d = abs(delta) / math.sqrt(variance_sum / n_per_variant)
    return float(sps.norm.cdf(d - z) + sps.norm.cdf(-d - z))


def required_units_per_variant(delta: float, variance_sum: float, alpha: float = 0.05,
                               power: float = 0.8, exact: bool = False) -> float:
    """Units per variant to detect ``delta`` with ``power``.

    Returns the (fractional) solution of ``achieved_power(n) == power``
    when ``exact`` is True, else that value rounded up to an integer.
    """
    alpha, power = check_alpha(alpha), check_probability(power, "power")
    if delta == 0 or variance_sum <= 0:
        raise ValueError("delta must be non-zero and variance_sum > 0")
    if power <= alpha:
        raise ValueError("power must exceed alpha")
    z = sps.norm.ppf(1.0 - alpha / 2.0) + sps.norm.ppf(power)
    n0 = z * z * variance_sum / (delta * delta)
    n = optimize.brentq(lambda x: achieved_power(delta, variance_sum, x, alpha) - power,
                        n0 * 0.5, n0 * 1.5, xtol=1e-12, rtol=1e-14)
    return n if exact else float(math.ceil(n - 1e-9))


def _check_plan(alpha: float, power: float, name: str, effect: float,
                days_elapsed: float | None) -> tuple[float, float]:
    """The arguments every plan shares: alpha, power, a positive effect size and elapsed days."""
    alpha, power = check_alpha(alpha), check_probability(power, "power")
    if not effect > 0:
        raise ValueError(f"{name} must be > 0, got {effect!r}")
    if days_elapsed is not None and not days_elapsed > 0:
        raise ValueError("days_elapsed must be > 0")
    return alpha, power


def power_analysis(control: Estimable, treatment: Estimable, mde: float,
                   relative: bool = True, alpha: float = 0.05, power: float = 0.8,
                   days_elapsed: float | None = None) -> PowerResult:
    """Units needed per variant for ``mde``, power now, and days to go.

    ``mde`` is a fraction of the control mean when ``relative`` (0.02 = 2%),
    else in metric units. Variances are the observed per-unit variances of both
    arms. ``days_elapsed`` (> 0) gives the observed daily rate of units for
    ``days_to_go``.
    """
    alpha, power = _check_plan(alpha, power, "mde", mde, days_elapsed)
    current = min(control.n, treatment.n)

    def failed(msg: str) -> PowerResult:
        return PowerResult(None, alpha, power, None, current, None, None, msg)

    if control.n < 2 or treatment.n < 2:
        return failed(MSG_TOO_FEW_UNITS)
    v = control.variance + treatment.variance
    if not v > 0:
        return failed("zero variance in both variants; power is undefined")
    if relative and not (control.mean != 0 and math.isfinite(control.mean)):
        return failed(MSG_ZERO_BASELINE)
    delta = mde * abs(control.mean) if relative else mde
    required = int(required_units_per_variant(delta, v, alpha, power))
    now = achieved_power(delta, v, current, alpha)
    days = None
    if days_elapsed is not None:
        rate = current / days_elapsed
        days = 0.0 if current >= required else (max(required - current, 0) / rate)
    return PowerResult(delta, alpha, power, required, current, now, days)


def noninferiority_units_per_variant(margin: float, variance_sum: float, alpha: float = 0.05,
                                     power: float = 0.8, exact: bool = False) -> float:
    """Units per variant for a fixed-horizon one-sided test at level ``alpha`` to show
    non-inferiority at absolute ``margin`` when the true difference is 0 (closed form)."""
    alpha, power = check_alpha(alpha), check_probability(power, "power")
    if not margin > 0 or not variance_sum > 0:
        raise ValueError("margin and variance_sum must be > 0")
    if power <= alpha:
        raise ValueError("power must exceed alpha")
    z = sps.norm.ppf(1.0 - alpha) + sps.norm.ppf(power)
    n = z * z * variance_sum / (margin * margin)
    return n if exact else float(math.ceil(n - 1e-9))


def sequential_noninferiority_power(margin: float, variance_sum: float, n_per_variant: float,
                                    alpha: float = 0.05, n_star: float = DEFAULT_N_STAR) -> float:
    """Chance that the always-valid interval's lower end exceeds ``-margin`` at
    ``n_per_variant`` units per arm when the true difference is 0."""
    if not n_per_variant > 0 or not variance_sum > 0:
        raise ValueError("n_per_variant and variance_sum must be > 0")
    se = math.sqrt(variance_sum / n_per_variant)
    radius = float(sequential_radius(se, 2.0 * n_per_variant, alpha, n_star))
    return float(sps.norm.cdf((margin - radius) / se))


def sequential_noninferiority_units(margin: float, variance_sum: float, alpha: float = 0.05,
                                    power: float = 0.8, n_star: float = DEFAULT_N_STAR,
                                    exact: bool = False) -> float:
    """Units per variant at which :func:`sequential_noninferiority_power` reaches ``power``."""
    alpha, power = check_alpha(alpha), check_probability(power, "power")
    if not margin > 0 or not variance_sum > 0:
        raise ValueError("margin and variance_sum must be > 0")

    def gap(n: float) -> float:
        return sequential_noninferiority_power(margin, variance_sum, n, alpha, n_star) - power

    lo, hi = 1.0, 2.0
    while gap(hi) < 0:
        lo, hi = hi, hi * 2.0
        if hi > 1e15:
            raise ValueError("margin too small for any feasible sample size")
    n = hi if gap(lo) >= 0 else optimize.brentq(gap, lo, hi, xtol=1e-9, rtol=1e-14)
    return n if exact else float(math.ceil(n - 1e-9))


def noninferiority_plan(control: Estimable, treatment: Estimable, margin: float,
                        relative: bool = True, alpha: float = 0.05, power: float = 0.8,
                        days_elapsed: float | None = None,
                        n_star: float = DEFAULT_N_STAR) -> PowerResult:
    """Units needed per variant to show non-inferiority at ``margin`` (a fraction of the control
    mean when ``relative``), assuming a true difference of 0; see the module docstring."""
    alpha, power = _check_plan(alpha, power, "margin", margin, days_elapsed)
    current = min(control.n, treatment.n)

    def failed(msg: str) -> PowerResult:
        return PowerResult(None, alpha, power, None, current, None, None, msg, "non_inferiority")

    if control.n < 2 or treatment.n < 2:
        return failed(MSG_TOO_FEW_UNITS)
    v = control.variance + treatment.variance
    if not v > 0:
        return failed("zero variance in both variants; power is undefined")
    if relative and not (control.mean != 0 and math.isfinite(control.mean)):
        return failed(MSG_ZERO_BASELINE)
    delta = margin * abs(control.mean) if relative else margin
    required = int(sequential_noninferiority_units(delta, v, alpha, power, n_star))
    fixed = int(noninferiority_units_per_variant(delta, v, alpha / 2.0, power))
    now = sequential_noninferiority_power(delta, v, current, alpha, n_star)
    days = None
    if days_elapsed is not None:
        rate = current / days_elapsed
        days = 0.0 if current >= required else (required - current) / rate
    return PowerResult(delta, alpha, power, required, current, now, days, None, "non_inferiority", fixed)
