"""Bayesian view vs gbstats and Monte Carlo; the recommendation rule table; capping;
the public API surface."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stats_reference import gbstats_bayes, random_mean_pair, random_ratio_pair, rel_err

import abtest.stats as S
from abtest.stats import (
    MeanStats,
    MetricEvidence,
    PowerResult,
    apply_cap,
    bayesian_test,
    choose_cap,
    gaussian_chance_and_loss,
    guardrail_status,
    recommend,
    srm_test,
    welch_test,
)


def test_bayesian_matches_gbstats_on_random_inputs() -> None:
    for seed in range(80):
        rng = np.random.default_rng(500 + seed)
        c, t = (random_mean_pair if seed % 2 else random_ratio_pair)(rng)
        cmp = welch_test(c, t)
        for scale, kind in (("relative", "relative"), ("absolute", "absolute")):
            for inverse in (False, True):
                ours = bayesian_test(cmp, scale=scale, higher_is_better=not inverse)
                ref = gbstats_bayes(c, t, kind, inverse)
                for key in ("chance_to_win", "loss_control", "loss_treatment",
                            "ci_lower", "ci_upper"):
                    r = ref[key]
                    if abs(r) < 1e-9:  # |z| > 6: gbstats' 1 - sf and truncnorm lose digits
                        assert abs(getattr(ours, key)) < 1e-8
                    else:
                        assert rel_err(getattr(ours, key), r) <= 1e-6, (seed, key)


def test_chance_and_loss_match_monte_carlo() -> None:
    rng = np.random.default_rng(0)
    for mu, sigma in ((0.01, 0.02), (-0.03, 0.01), (0.0, 0.05)):
        draws = rng.normal(mu, sigma, 2_000_000)
        chance, loss_t, loss_c = gaussian_chance_and_loss(mu, sigma)
        assert chance == pytest.approx((draws > 0).mean(), abs=2e-3)
        assert loss_t == pytest.approx(np.maximum(0, -draws).mean(), rel=5e-3, abs=1e-6)
        assert loss_c == pytest.approx(np.maximum(0, draws).mean(), rel=5e-3, abs=1e-6)
        inv = gaussian_chance_and_loss(mu, sigma, higher_is_better=False)
        assert inv[0] == pytest.approx(1 - chance) and inv[1] == pytest.approx(loss_c)


def test_bayesian_explains_missing_relative_effect() -> None:
    cmp = welch_test(MeanStats.proportion(100, 0), MeanStats.proportion(100, 4))
    b = bayesian_test(cmp, scale="relative")
    assert b.chance_to_win is None and b.error == S.MSG_ZERO_BASELINE
    assert bayesian_test(cmp, scale="absolute").chance_to_win > 0.9
    with pytest.raises(ValueError):
        bayesian_test(cmp, scale="log")  # type: ignore[arg-type]


def ev(name: str, lo: float, hi: float, higher: bool = True,
       margin: float | None = None) -> MetricEvidence:
    return MetricEvidence(name, (lo + hi) / 2, lo, hi, higher, margin)


WIN = ev("conversion", 0.01, 0.05)
FLAT = ev("conversion", -0.01, 0.03)
LOSS = ev("conversion", -0.05, -0.01)
OK_LAT = ev("latency_p99_ms", -0.20, -0.05, higher=False)  # faster
BAD_ERR = ev("error_rate", 0.15, 0.40, higher=False, margin=0.10)  # worse beyond margin
UNSURE_ERR = ev("error_rate", -0.05, 0.15, higher=False, margin=0.10)
SRM_BAD = srm_test([10000, 10600], [1, 1])
SRM_OK = srm_test([10000, 10010], [1, 1])
REACHED = PowerResult(0.01, 0.05, 0.8, 1000, 1200, 0.9, 0.0)
SHORT = PowerResult(0.01, 0.05, 0.8, 5000, 1200, 0.3, 7.6)


@pytest.mark.parametrize("primary, guards, srm, power, action", [
    (WIN, [OK_LAT], SRM_OK, SHORT, "ship"),                  # rule 5
    (WIN, [OK_LAT, BAD_ERR], SRM_OK, None, "roll back"),     # rule 1
    (LOSS, [OK_LAT], SRM_OK, None, "roll back"),             # rule 2
    (WIN, [OK_LAT], SRM_BAD, None, "keep running"),          # rule 3: SRM blocks ship
    (WIN, [UNSURE_ERR], SRM_OK, None, "keep running"),       # rule 6
    (FLAT, [OK_LAT], SRM_OK, REACHED, "keep control"),       # rule 7
    (FLAT, [OK_LAT], SRM_OK, SHORT, "keep running"),         # rule 8
    (MetricEvidence("conversion", None, None, None, True, error="a variant has no units yet"),
     [], None, None, "keep running"),                       # rule 4
    (WIN, [OK_LAT, BAD_ERR], SRM_BAD, None, "roll back"),    # a breach outranks SRM
])
def test_rule_table(primary, guards, srm, power, action) -> None:
    rec = recommend(primary, guards, srm=srm, power=power)
    assert rec.action == action, rec.reasons
    assert rec.reasons and all(isinstance(r, str) and r for r in rec.reasons)
    if srm is SRM_BAD:
        assert rec.reasons[0].startswith("sample ratio mismatch")
    if power is SHORT:
        assert any("about 7.6 days at the current rate" in r for r in rec.reasons) is (
            rec.action == "keep running")


def test_guardrail_directions_and_margins() -> None:
    assert guardrail_status(ev("latency", 0.01, 0.03, higher=False)) == "breached"
    assert guardrail_status(ev("latency", 0.01, 0.03, higher=False, margin=0.05)) == "ok"
    assert guardrail_status(ev("conversion", -0.03, -0.01)) == "breached"
    assert guardrail_status(ev("conversion", -0.03, 0.01)) == "ok"  # no margin: not breached
    assert guardrail_status(ev("conversion", -0.03, 0.01, margin=0.02)) == "inconclusive"
    assert guardrail_status(MetricEvidence("x", None, None, None, True, error="e")) == "unavailable"
    with pytest.raises(ValueError):
        ev("x", 0, 1, margin=-0.1)


def test_evidence_from_a_sequential_effect() -> None:
    cmp = welch_test(MeanStats.proportion(20000, 2000), MeanStats.proportion(20000, 2300))
    seq = S.sequential_test(cmp).relative
    e = MetricEvidence.from_effect("conversion", seq, higher_is_better=True)
    assert (e.ci_lower, e.ci_upper) == (seq.ci_lower, seq.ci_upper)
    assert recommend(e).action == "ship"
    assert MetricEvidence.from_effect("conversion", None, True).error is not None


def test_capping_helpers() -> None:
    assert choose_cap(1500.0) == 1500.0 and choose_cap(1500.0, ceiling=1000.0) == 1000.0
    np.testing.assert_array_equal(apply_cap([1.0, 5.0, 9.0], 5.0), [1.0, 5.0, 5.0])
    capped = MeanStats.from_values(apply_cap(np.r_[np.ones(99), 1e6], 2.0))
    assert capped.variance < 1.0
    with pytest.raises(ValueError):
        choose_cap(float("nan"))


def test_public_api_is_complete_and_pure() -> None:
    assert sorted(set(S.__all__)) == sorted(S.__all__)
    for name in S.__all__:
        assert hasattr(S, name), name
    code = ("import sys, abtest.stats; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('flask', 'sqlalchemy', 'torch', 'pandas', 'statsmodels', 'gbstats')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    pkg = Path(S.__file__).parent
    for path in pkg.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert node.module.split(".")[0] in {"__future__", "collections", "dataclasses", "typing",
                                                     "numpy", "scipy", "math"}, (path, node.module)
        assert len(path.read_text().splitlines()) < 400, path


def test_power_reason_speaks_in_hours_or_minutes_for_short_waits() -> None:
    from abtest.stats.decision import _duration

    assert (_duration(7.6), _duration(0.5), _duration(0.001)) == ("7.6 days", "12.0 hours", "1 minute")
