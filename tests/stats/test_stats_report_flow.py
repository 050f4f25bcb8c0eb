"""The flow the report layer follows, end to end on simulated raw data, and the
promise that every result serialises to strict JSON (no NaN/inf), errors included."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

import abtest.stats as S


def _simulate_variant(rng: np.random.Generator, units: int, latency_scale: float,
                      error_p: float, conv_p: float) -> dict:
    reqs = 1 + rng.poisson(4, units)
    unit = np.repeat(np.arange(units), reqs)
    lat = latency_scale * rng.lognormal(0, 0.4, units)[unit] * rng.lognormal(0, 0.2, unit.size)
    err = rng.random(unit.size) < error_p
    d = reqs.astype(float)
    return {
        "units": units, "lat": lat, "unit": unit,
        "latency": S.RatioStats.from_values(np.bincount(unit, lat), d),
        "error_rate": S.RatioStats.from_values(np.bincount(unit, err.astype(float)), d),
        "conversion": S.MeanStats.proportion(units, int(rng.binomial(units, conv_p))),
    }


def _strict_json(obj: object) -> str:
    return json.dumps(dataclasses.asdict(obj), allow_nan=False)  # type: ignore[arg-type]


def test_full_report_flow_is_consistent_and_json_safe() -> None:
    rng = np.random.default_rng(12)
    ctrl = _simulate_variant(rng, 3000, 400.0, 0.02, 0.10)
    trt = _simulate_variant(rng, 3000, 300.0, 0.02, 0.10)  # INT4: ~25% faster
    srm = S.srm_test([ctrl["units"], trt["units"]], [0.5, 0.5])
    comparisons = {
        "latency_ms": (S.welch_test(ctrl["latency"], trt["latency"]), False),
        "error_rate": (S.welch_test(ctrl["error_rate"], trt["error_rate"]), False),
        "conversion": (S.welch_test(ctrl["conversion"], trt["conversion"]), True),
    }
    for q in (0.5, 0.95, 0.99):
        qc = S.quantile_from_values(ctrl["lat"], ctrl["unit"], q)
        qt = S.quantile_from_values(trt["lat"], trt["unit"], q)
        comparisons[f"latency_p{int(q * 100)}_ms"] = (S.compare_quantiles(qc, qt), False)
        _strict_json(qc)
    views = {k: S.analyze(c, higher_is_better=h) for k, (c, h) in comparisons.items()}
    adjusted = S.adjust_p_values([v.comparison.absolute.p_value for v in views.values()], "holm")
    for view in views.values():
        _strict_json(view)
    assert views["latency_ms"].comparison.relative.estimate < -0.15
    assert views["latency_ms"].sequential.significant
    assert views["latency_p50_ms"].bayesian.chance_to_win > 0.99  # lower is better
    assert adjusted.rejected[0]
    plan = S.power_analysis(ctrl["conversion"], trt["conversion"], mde=0.05, days_elapsed=2)
    guard = [S.MetricEvidence.from_effect("error_rate", views["error_rate"].sequential.relative,
                                          False, margin=0.5),
             S.MetricEvidence.from_effect("latency_p99_ms",
                                          views["latency_p99_ms"].sequential.relative, False)]
    primary = S.MetricEvidence.from_effect("latency_ms", views["latency_ms"].sequential.relative,
                                           False)
    rec = S.recommend(primary, guard, srm=srm, power=plan)
    assert rec.action == "ship", rec.reasons
    for obj in (srm, adjusted, plan, rec):
        _strict_json(obj)


def test_error_results_are_json_safe_too() -> None:
    empty = S.MeanStats(0, 0.0, 0.0)
    cmp = S.welch_test(empty, S.MeanStats(10, 5.0, 4.0))
    view = S.analyze(cmp)
    assert view.comparison.error and view.sequential.error and view.bayesian.error
    _strict_json(view)
    _strict_json(S.variant_estimate(empty))
    _strict_json(S.quantile_from_values([], [], 0.5))
    _strict_json(S.power_analysis(empty, empty, mde=0.1))
