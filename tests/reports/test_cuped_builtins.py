"""CUPED on the built-in request metrics: the report's adjusted ``latency_ms`` and
``error_rate`` against gbstats 0.8.0's regression adjustment run on delta-method linearised
per-unit values computed with numpy from the rows the test inserted (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from gbstats.frequentist.tests import FrequentistConfig, TwoSidedTTest
from gbstats.models.statistics import RegressionAdjustedStatistic, SampleMeanStatistic, compute_theta

from abtest.stats import RatioStats, welch_test

from .factories import T0

METRICS = [{"name": "latency_ms", "role": "primary"}]
DAY = timedelta(days=1)


def _outside(f, unit, latency, status="ok", **kw):  # type: ignore[no-untyped-def]
    """A request of the unit logged outside any experiment (no experiment, phase or variant)."""
    f.request(unit, None, latency, status, in_experiment=False, experiment_id=None, **kw)
    f.log.requests[-1].update(phase=None, engine="v1-fp32")


def _populate(f, rng, n=240, history=True):  # type: ignore[no-untyped-def]
    """Per unit: latency ~ a unit-level base; pre-period requests (logged outside the experiment)
    in the lookback for 4 units in 5, one 30 days back (outside it) and a shadow copy (never
    counted); post-period requests in the experiment. Returns each unit's post and pre sums."""
    units = []
    for i in range(n):
        variant = "treatment" if i % 2 else "control"
        f.exposure(f"u{i}", variant, T0)
        base = float(rng.gamma(4.0, 60.0))
        pre = {"lat": 0.0, "ok": 0, "err": 0, "tot": 0}
        if history and i % 5:
            for k in range(int(rng.integers(1, 4))):
                failed = rng.random() < 0.15 + 0.2 * (base > 300)
                lat = float(rng.uniform(5, 50)) if failed else max(1.0, base + float(rng.normal(0, 25)))
                _outside(f, f"u{i}", lat, "error" if failed else "ok", at=T0 - 2 * DAY + timedelta(minutes=k))
                pre["tot"] += 1
                pre["err" if failed else "ok"] += 1
                pre["lat"] += 0.0 if failed else lat
        _outside(f, f"u{i}", 5000.0, at=T0 - 30 * DAY)  # outside the 14-day lookback
        _outside(f, f"u{i}", 9000.0, at=T0 - DAY, shadow=True)  # a shadow copy
        post = {"lat": 0.0, "ok": 0, "err": 0, "tot": 0}
        for k in range(int(rng.integers(1, 5))):
            failed = rng.random() < 0.1 + 0.2 * (base > 300)
            lat = float(rng.uniform(5, 50)) if failed else max(
                1.0, base * (0.9 if variant == "treatment" else 1.0) + float(rng.normal(0, 25)))
            f.request(f"u{i}", variant, lat, "error" if failed else "ok", at=T0 + timedelta(minutes=1 + k))
            post["tot"] += 1
            post["err" if failed else "ok"] += 1
            post["lat"] += 0.0 if failed else lat
        units.append((variant, post, pre))
    f.flush()
    return units


def _arrays(units, num, den):  # type: ignore[no-untyped-def]
    """Per variant (m, d, a, b), units without history (b = 0) at the pooled pre means."""
    with_h = [u for u in units if u[2][den] > 0]
    abar = np.mean([u[2][num] for u in with_h])
    bbar = np.mean([u[2][den] for u in with_h])
    out = {}
    for v in ("control", "treatment"):
        mine = [u for u in units if u[0] == v]
        m = np.array([u[1][num] for u in mine], float)
        d = np.array([u[1][den] for u in mine], float)
        a = np.array([u[2][num] if u[2][den] > 0 else abar for u in mine], float)
        b = np.array([u[2][den] if u[2][den] > 0 else bbar for u in mine], float)
        out[v] = (m, d, a, b)
    return out, len(with_h)


def _ra(y, x):  # type: ignore[no-untyped-def]
    return RegressionAdjustedStatistic(
        n=len(y), post_statistic=SampleMeanStatistic(n=len(y), sum=float(y.sum()), sum_squares=float(y @ y)),
        pre_statistic=SampleMeanStatistic(n=len(x), sum=float(x.sum()), sum_squares=float(x @ x)),
        post_pre_sum_of_products=float(x @ y), theta=0)


def _gbstats(arms, kind):  # type: ignore[no-untyped-def]
    """gbstats' regression adjustment on linearised ratios: theta by ``compute_theta`` on the
    values linearised at the pooled ratios; each variant's values ``R + (m - R d) / mean(d)``
    (mean R, the delta-method variance) with the same for the covariate."""
    m, d, a, b = (np.concatenate([arms["control"][j], arms["treatment"][j]]) for j in range(4))
    r, rx = m.sum() / d.sum(), a.sum() / b.sum()
    pooled = {}
    for v, (mv, dv, av, bv) in arms.items():
        pooled[v] = _ra((mv - r * dv) / d.mean(), (av - rx * bv) / b.mean())
    theta = compute_theta(pooled["control"], pooled["treatment"])
    own = {}
    for v, (mv, dv, av, bv) in arms.items():
        rv, rxv = mv.sum() / dv.sum(), av.sum() / bv.sum()
        own[v] = _ra(rv + (mv - rv * dv) / dv.mean(), rxv + (av - rxv * bv) / bv.mean())
    test = TwoSidedTTest(own["control"], own["treatment"], FrequentistConfig(difference_type=kind))
    test.stat_a.theta = test.stat_b.theta = theta
    res = test.compute_result()
    return {"estimate": res.expected, "ci_lower": res.ci[0], "ci_upper": res.ci[1], "p_value": res.p_value,
            "se": res.uplift.stddev, "theta": theta}


@pytest.mark.parametrize("metric, num, den", [("latency_ms", "lat", "ok"), ("error_rate", "err", "tot")])
def test_builtin_metric_cuped_matches_gbstats(factory, report_of, metric, num, den) -> None:  # type: ignore[no-untyped-def]
    f = factory(metrics=METRICS)
    units = _populate(f, np.random.default_rng(21))
    got = next(m for m in report_of()["metrics"] if m["name"] == metric)
    arms, n_hist = _arrays(units, num, den)
    comp = got["comparisons"][0]
    for kind in ("absolute", "relative"):
        ref = _gbstats(arms, kind)
        for field in ("estimate", "ci_lower", "ci_upper"):
            assert comp[kind][field] == pytest.approx(ref[field], rel=1e-6, abs=1e-12), (kind, field)
    ref = _gbstats(arms, "absolute")
    assert comp["absolute"]["se"] == pytest.approx(ref["se"], rel=1e-6)
    assert comp["p_value"] == pytest.approx(ref["p_value"], rel=1e-6, abs=1e-9)
    cuped = got["cuped"]
    assert cuped["units_with_history"] == n_hist and cuped["units"] == len(units) and cuped["lookback_days"] == 14
    (adj,) = cuped["adjustments"]
    assert adj["theta"] == pytest.approx(ref["theta"], rel=1e-6)
    plain = welch_test(RatioStats.from_values(*arms["control"][:2]), RatioStats.from_values(*arms["treatment"][:2]))
    assert adj["variance_reduction"] == pytest.approx(1 - (ref["se"] / plain.absolute.se) ** 2, rel=1e-6)
    # the per-variant estimates stay the plain ratios
    m, d = arms["control"][:2]
    assert got["variants"]["control"]["estimate"] == pytest.approx(m.sum() / d.sum(), rel=1e-9)
    if metric == "latency_ms":
        assert adj["variance_reduction"] > 0.3  # the unit's past latency explains much of it
    quantile = next(m for m in report_of()["metrics"] if m["name"] == "latency_p95_ms")
    assert "cuped" not in quantile


def _plain_latency(units):  # type: ignore[no-untyped-def]
    arms = {v: RatioStats.from_values([u[1]["lat"] for u in units if u[0] == v],
                                      [u[1]["ok"] for u in units if u[0] == v]) for v in ("control", "treatment")}
    return welch_test(arms["control"], arms["treatment"])


def test_cuped_off_leaves_builtin_metrics_unadjusted(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory(metrics=METRICS, cuped={"enabled": False})
    units = _populate(f, np.random.default_rng(22))
    got = next(m for m in report_of()["metrics"] if m["name"] == "latency_ms")
    assert "cuped" not in got
    plain = _plain_latency(units)
    assert got["comparisons"][0]["absolute"]["estimate"] == pytest.approx(plain.absolute.estimate, rel=1e-9)
    assert got["comparisons"][0]["absolute"]["se"] == pytest.approx(plain.absolute.se, rel=1e-9)


def test_no_history_means_no_adjustment(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory(metrics=METRICS)
    units = _populate(f, np.random.default_rng(23), history=False)
    report = report_of()
    got = next(m for m in report["metrics"] if m["name"] == "latency_ms")
    assert "cuped" not in got and all("cuped" not in m for m in report["metrics"])
    plain = _plain_latency(units)
    assert got["comparisons"][0]["absolute"]["estimate"] == pytest.approx(plain.absolute.estimate, rel=1e-9)
    assert got["comparisons"][0]["absolute"]["se"] == pytest.approx(plain.absolute.se, rel=1e-9)


def test_a_capped_latency_is_not_adjusted(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory(metrics=METRICS)
    _populate(f, np.random.default_rng(24))
    metrics = {m["name"]: m for m in report_of(cap=0.99)["metrics"]}
    assert "cuped" not in metrics["latency_ms"] and "cuped" in metrics["error_rate"]
