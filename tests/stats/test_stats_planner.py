"""The power planner's sizes against statsmodels' normal power solver, an independent closed form
and a simulation (no database: plans with a given baseline)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.power import NormalIndPower

from abtest.errors import ValidationError
from abtest.services.planner import parse_plan_request, plan

SOLVER = NormalIndPower()


def _plan(**payload):  # type: ignore[no-untyped-def]
    return plan(None, parse_plan_request(payload))


def _statsmodels_n(effect_size: float, alpha: float, power: float, alternative: str) -> int:
    return math.ceil(SOLVER.solve_power(effect_size=effect_size, nobs1=None, alpha=alpha, power=power, ratio=1.0,
                                        alternative=alternative) - 1e-9)


# statsmodels' NormalIndPower assumes one sigma in both groups: se = sigma sqrt(2 / n). A sum of
# unequal variances V is the same test with sigma^2 = V / 2, so the reference for two proportions
# (unpooled variance p1 q1 + p2 q2) is effect_size = d / sqrt(V / 2).
BINARY = [(p, mde, alpha, power, variants) for p in (0.02, 0.1, 0.3, 0.5, 0.8) for mde in (0.03, 0.1, 0.25)
          for alpha, power in ((0.05, 0.8), (0.01, 0.9), (0.1, 0.95)) for variants in (2, 4)]


@pytest.mark.parametrize("p, mde, alpha, power, variants", BINARY)
def test_binary_superiority_matches_statsmodels(p, mde, alpha, power, variants) -> None:  # type: ignore[no-untyped-def]
    if p * (1 + mde) >= 1:
        with pytest.raises(ValidationError, match="outside"):
            _plan(kind="binary", baseline=p, mde=mde, alpha=alpha, power=power, variants=variants)
        return
    got = _plan(kind="binary", baseline=p, mde=mde, alpha=alpha, power=power, variants=variants)
    d = p * mde
    v = p * (1 - p) + (p + d) * (1 - p - d)
    a = alpha / (variants - 1)  # Bonferroni over the treatments
    want = _statsmodels_n(d / math.sqrt(v / 2), a, power, "two-sided")
    assert abs(got.units_per_variant - want) <= 1
    assert got.comparison_alpha == pytest.approx(a) and got.total_units == got.units_per_variant * variants
    # the textbook closed form ignores the far tail's power, Phi(-d / se - z), so it is never
    # smaller; at a million units that tail (~1e-6) is worth a few units
    z = sps.norm.ppf(1 - a / 2) + sps.norm.ppf(power)
    closed = math.ceil(z * z * v / (d * d))
    assert 0 <= closed - got.units_per_variant <= 3


@pytest.mark.parametrize("mean, sd, mde, relative", [(300.0, 80.0, 0.02, True), (0.4, 1.3, 0.05, True),
                                                     (10.0, 2.0, 0.5, False), (-5.0, 3.0, 0.1, True),
                                                     (1200.0, 900.0, 25.0, False)])
@pytest.mark.parametrize("alpha, power, variants", [(0.05, 0.8, 2), (0.05, 0.9, 3), (0.2, 0.6, 5)])
def test_mean_superiority_matches_statsmodels(mean, sd, mde, relative, alpha, power, variants) -> None:  # type: ignore[no-untyped-def]
    got = _plan(kind="mean", baseline=mean, sd=sd, mde=mde, relative=relative, alpha=alpha, power=power,
                variants=variants)
    d = mde * abs(mean) if relative else mde
    want = _statsmodels_n(d / sd, alpha / (variants - 1), power, "two-sided")
    assert abs(got.units_per_variant - want) <= 1 and got.absolute_effect == pytest.approx(d)
    # the variance form gives the same plan
    same = _plan(kind="mean", baseline=mean, variance=sd * sd, mde=mde, relative=relative, alpha=alpha,
                 power=power, variants=variants)
    assert same.units_per_variant == got.units_per_variant


@pytest.mark.parametrize("kind, baseline, spread, margin, relative", [
    ("binary", 0.1, None, 0.1, True), ("binary", 0.5, None, 0.02, False), ("binary", 0.9, None, 0.01, True),
    ("mean", 300.0, 80.0, 0.05, True), ("mean", 2.0, 1.0, 0.1, False)])
@pytest.mark.parametrize("alpha, power, variants", [(0.05, 0.8, 2), (0.025, 0.9, 2), (0.05, 0.8, 4)])
@pytest.mark.parametrize("direction", ["increase", "decrease"])
def test_noninferiority_matches_statsmodels_one_sided(kind, baseline, spread, margin, relative, alpha, power,  # type: ignore[no-untyped-def]
                                                      variants, direction) -> None:
    payload = dict(kind=kind, baseline=baseline, margin=margin, relative=relative, alpha=alpha, power=power,
                   variants=variants, direction=direction)
    if spread is not None:
        payload["sd"] = spread
    got = _plan(**payload)
    sigma = spread if spread is not None else math.sqrt(baseline * (1 - baseline))  # true difference 0
    m = margin * abs(baseline) if relative else margin
    want = _statsmodels_n(m / sigma, alpha / (variants - 1), power, "larger")
    assert abs(got.units_per_variant - want) <= 1
    assert got.test == "non_inferiority" and got.sides == 1 and got.direction == direction


def test_days_at_the_given_traffic_and_coverage() -> None:
    got = _plan(kind="binary", baseline=0.2, mde=0.1, daily_units=1234.0, coverage=0.3, variants=3)
    assert got.days == math.ceil(got.total_units / (1234.0 * 0.3))
    assert _plan(kind="binary", baseline=0.2, mde=0.1).days is None
    body = got.to_json()
    assert list(body)[:3] == ["units_per_variant", "total_units", "days"]
    assert body["inputs"]["baseline"] == 0.2 and body["inputs"]["variants"] == 3 and body["correction"] == "bonferroni"


def test_simulated_power_of_a_binary_plan_reaches_the_target() -> None:
    """Draw both arms at the planned size and run the unpooled two-proportion z-test."""
    got = _plan(kind="binary", baseline=0.1, mde=0.2, power=0.8)
    n = got.units_per_variant
    rng = np.random.default_rng(11)
    reps = 4000
    x1, x2 = rng.binomial(n, 0.1, reps) / n, rng.binomial(n, 0.12, reps) / n
    z = (x2 - x1) / np.sqrt((x1 * (1 - x1) + x2 * (1 - x2)) / n)
    rate = float(np.mean(np.abs(z) > sps.norm.ppf(0.975)))
    assert abs(rate - 0.8) < 3 * math.sqrt(0.8 * 0.2 / reps) + 0.005


@pytest.mark.parametrize("payload, field", [
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "alpha": 0}, "alpha"),
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "alpha": 0.6}, "alpha"),
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "power": 0.5}, "power"),
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "power": 1}, "power"),
    ({"kind": "binary", "baseline": 0.1, "mde": 0}, "mde"),
    ({"kind": "binary", "baseline": 0.1, "margin": -0.1}, "margin"),
    ({"kind": "binary", "baseline": 0.1}, "mde"),
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "margin": 0.1}, "mde"),
    ({"kind": "binary", "baseline": 0, "mde": 0.1}, "baseline"),
    ({"kind": "binary", "baseline": 1.0, "mde": 0.1}, "baseline"),
    ({"kind": "binary", "baseline": 0.9, "mde": 0.2}, "mde"),
    ({"kind": "binary", "baseline": 0.1, "sd": 1, "mde": 0.1}, "sd"),
    ({"kind": "mean", "baseline": 3, "mde": 0.1}, "sd"),
    ({"kind": "mean", "baseline": 3, "sd": 0, "mde": 0.1}, "sd"),
    ({"kind": "mean", "baseline": 0, "sd": 1, "mde": 0.1}, "baseline"),
    ({"kind": "ratio", "baseline": 3, "sd": 1, "mde": 0.1}, "kind"),
    ({"baseline": 3, "sd": 1, "mde": 0.1}, "kind"),
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "variants": 1}, "variants"),
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "variants": 2.5}, "variants"),
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "daily_units": 0}, "daily_units"),
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "coverage": 1.5}, "coverage"),
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "direction": "up"}, "direction"),
    ({"kind": "binary", "baseline": 0.1, "mde": "big"}, "mde"),
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "extra": 1}, "extra"),
    ({"kind": "binary", "baseline": 0.1, "mde": 1e-9}, "mde"),
    ({"kind": "mean", "baseline": 1.0, "sd": 1e200, "mde": 0.1}, "sd"),
    ({"kind": "mean", "baseline": 1e308, "sd": 1.0, "mde": 1e10}, "baseline"),
    ({"metric": "latency_ms", "mde": 0.1}, "experiment"),
    ({"experiment": "exp-1", "mde": 0.1}, "metric"),
    ({"experiment": "exp-1", "metric": "latency_ms", "baseline": 3, "mde": 0.1}, "baseline"),
])
def test_bad_requests_name_the_field(payload, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as caught:
        _plan(**payload)
    assert caught.value.details["field"] == field


def test_the_reports_fixed_horizon_noninferiority_size_is_the_planners_at_half_alpha() -> None:
    from abtest.stats import MeanStats, noninferiority_plan

    arm = MeanStats.from_values(np.random.default_rng(3).gamma(3.0, 100.0, 500))
    report = noninferiority_plan(arm, arm, 0.03, True, 0.05)
    mine = _plan(kind="mean", baseline=arm.mean, variance=arm.variance, margin=0.03, alpha=0.025)
    assert report.fixed_horizon_per_variant == mine.units_per_variant
    assert report.required_per_variant > mine.units_per_variant  # the always-valid interval needs more
