"""The LLM and cost built-ins and ``cost_per_event``, against an independent computation from
the raw request rows (plain Python per unit, numpy for the delta method, scipy for Welch), on
SQLite and PostgreSQL; rows logged before the columns existed; an engine without a price."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from abtest.reports.rollups import in_sample
from abtest.stats import SKETCH_ACCURACY, RatioStats, quantile_ranks

from . import reference as ref
from .factories import T0

PRICE = 1.20
METRICS = [
    {"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary"},
    {"name": "cost_per_purchase", "kind": "cost_per_event", "event": "purchase"},
    {"name": "cost_per_request", "role": "guardrail"},
    {"name": "ttft_p95_ms", "role": "guardrail"},
]
OLD = 25  # ok requests logged before the LLM columns were recorded (all NULL)

# metric -> (numerator, denominator) of one ok request row; None: the request does not count
PER_REQUEST: dict[str, Callable[[Mapping[str, Any]], tuple[float, float] | None]] = {
    "ttft_ms": lambda r: None if r["ttft_ms"] is None else (r["ttft_ms"], 1.0),
    "completion_tokens": lambda r: None if r["completion_tokens"] is None else (r["completion_tokens"], 1.0),
    "tokens_per_s": lambda r: None if r["decode_ms"] is None or r["completion_tokens"] is None else (
        max(r["completion_tokens"] - 1, 0), r["decode_ms"] / 1000),
    "truncation_rate": lambda r: None if r["finish_reason"] is None else (float(r["finish_reason"] == "length"), 1.0),
    "engine_ms": lambda r: None if r["compute_ms"] is None else (r["compute_ms"], 1.0),
    "cost_per_request": lambda r: None if r["cost"] is None else (r["cost"], 1.0),
}


def _llm_row(rng: np.random.Generator, variant: str, priced: bool) -> dict[str, Any]:
    fast = variant == "treatment"
    tokens = int(rng.integers(1, 65))
    compute = tokens * (2.0 if fast else 9.0) * rng.uniform(0.7, 1.3) + rng.uniform(1, 20)
    return {"ttft_ms": float(rng.lognormal(3.0 if fast else 3.6, 0.5)), "completion_tokens": tokens,
            "decode_ms": float((tokens - 1) * (3.0 if fast else 11.0) * rng.uniform(0.8, 1.2)),
            "finish_reason": "length" if tokens == 64 or rng.random() < (0.1 if fast else 0.05) else "stop",
            "compute_ms": compute, "cost": compute / 3.6e6 * PRICE if priced else None}


def _fill(f: Any, rng: np.random.Generator, *, priced: Mapping[str, bool], units: int = 240) -> None:
    for i in range(units):
        unit, variant = f"u{i}", "treatment" if i % 2 else "control"
        seen = T0 + timedelta(days=i % 3, minutes=i % 40)
        f.exposure(unit, variant, seen)
        for k in range(int(rng.integers(0, 6))):  # some units never send a request
            at = seen + timedelta(seconds=20 * k + 1)
            if rng.random() < 0.05:
                f.request(unit, variant, rng.uniform(5, 50), "error", at=at)
            else:
                f.request(unit, variant, 200 + rng.exponential(80), at=at, **_llm_row(rng, variant, priced[variant]))
        for _ in range(int(rng.poisson(0.4 if variant == "treatment" else 0.3))):
            f.event(unit, "purchase", seen + timedelta(hours=1))
    for i in range(OLD):  # logged before the LLM columns: ok, but every new column NULL
        f.request(f"u{i}", "treatment" if i % 2 else "control", 250.0, at=T0 + timedelta(hours=2))
    for i in range(20):  # rows no metric may count
        f.request(f"u{i}", "treatment", 900.0, shadow=True, **_llm_row(rng, "treatment", True))
        f.request(f"u{i}", "control", 900.0, in_experiment=False, **_llm_row(rng, "control", True))
        f.request(f"u{i}", "control", 900.0, phase=f.phase + 1, **_llm_row(rng, "control", True))
    f.flush()


@pytest.fixture
def llm(factory):  # type: ignore[no-untyped-def]
    # The hand computation is the plain delta method: for the units first exposed after T0, the
    # rows "no metric may count" are history CUPED would adjust on (test_cuped_builtins.py).
    f = factory("exp-1", metrics=METRICS, cuped={"enabled": False})
    _fill(f, np.random.default_rng(11), priced={"control": True, "treatment": True})
    return f


def _metric(report: Mapping[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in report["metrics"] if m["name"] == name)


def _per_unit(rows: list[Mapping[str, Any]], variant: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Every unit with a served request of ``variant`` (0/0 when none of them counts)."""
    m: dict[str, float] = defaultdict(float)
    d: dict[str, float] = defaultdict(float)
    for r in rows:
        if r["variant"] != variant:
            continue
        m[r["unit_id"]] += 0.0
        d[r["unit_id"]] += 0.0
        pair = PER_REQUEST[metric](r) if r["status"] == "ok" else None
        if pair is not None:
            m[r["unit_id"]] += pair[0]
            d[r["unit_id"]] += pair[1]
    units = sorted(m)
    return np.array([m[u] for u in units]), np.array([d[u] for u in units])


def _check_ratio(m: Mapping[str, Any], pairs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    est = {}
    for v, (num, den) in pairs.items():
        r, se = ref.delta_method(num, den)
        est[v] = (r, se, num.size)
        got = m["variants"][v]
        assert got["units"] == num.size
        assert got["estimate"] == pytest.approx(r, rel=1e-9)
        assert got["se"] == pytest.approx(se, rel=1e-7)
        assert got["requests"] == int(den.sum())
    p, _ = ref.welch_from_se(*est["control"], *est["treatment"])
    comp = m["comparisons"][0]
    assert comp["p_value"] == pytest.approx(p, rel=1e-6)
    assert comp["absolute"]["estimate"] == pytest.approx(est["treatment"][0] - est["control"][0], rel=1e-7)


@pytest.mark.parametrize("name", sorted(PER_REQUEST))
def test_llm_ratio_metrics_match_the_delta_method_by_hand(llm, report_of, name) -> None:  # type: ignore[no-untyped-def]
    report = report_of()
    reqs = ref.served(llm.log.requests, llm.phase)
    _check_ratio(_metric(report, name), {v: _per_unit(reqs, v, name) for v in ("control", "treatment")})
    assert _metric(report, name)["direction"] == ("increase" if name == "tokens_per_s" else "decrease")


@pytest.mark.parametrize("name", ["ttft_ms", "completion_tokens", "tokens_per_s", "truncation_rate", "engine_ms",
                                  "cost_per_request", "ttft_p95_ms", "cost_per_purchase"])
def test_rows_logged_before_the_columns_are_left_out_with_a_count(llm, report_of, name) -> None:  # type: ignore[no-untyped-def]
    ok = [r for r in ref.served(llm.log.requests, llm.phase) if r["status"] == "ok"]
    column = {"ttft_ms": "ttft_ms", "ttft_p95_ms": "ttft_ms", "completion_tokens": "completion_tokens",
              "tokens_per_s": "decode_ms", "truncation_rate": "finish_reason"}.get(name, "compute_ms")
    missing = sum(r[column] is None for r in ok)
    assert missing == OLD
    what = {"ttft_ms": "times to first token", "ttft_p95_ms": "times to first token",
            "completion_tokens": "token counts", "tokens_per_s": "decode times",
            "truncation_rate": "finish reasons"}.get(name, "engine compute times")
    report = report_of()
    assert _metric(report, name)["note"] == f"{OLD} ok requests logged before {what} were recorded are left out"
    assert "note" not in _metric(report, "latency_ms")


def test_cost_per_event_is_each_units_cost_over_its_events(llm, report_of) -> None:  # type: ignore[no-untyped-def]
    """Every exposed unit counts: its requests' cost (0 without any) over its attributed events
    (0 without any), a ratio per unit."""
    report = report_of()
    reqs = ref.served(llm.log.requests, llm.phase)
    cost: dict[str, float] = defaultdict(float)
    for r in reqs:
        if r["status"] == "ok" and r["cost"] is not None:
            cost[r["unit_id"]] += r["cost"]
    events = ref.attributed_values(llm.log, llm.phase, "purchase", 86_400, "count")
    pairs = {}
    for v in ("control", "treatment"):
        units = [x["unit_id"] for x in llm.log.exposures if x["variant"] == v and x["phase"] == llm.phase]
        pairs[v] = (np.array([cost.get(u, 0.0) for u in units]), np.array([events.get((u, v), 0.0) for u in units]))
        assert any(cost.get(u) is None for u in units)  # units without a request are in
    m = _metric(report, "cost_per_purchase")
    assert (m["kind"], m["shape"], m["direction"], m["event"]) == ("cost_per_event", "ratio", "decrease", "purchase")
    _check_ratio(m, pairs)


@pytest.mark.parametrize("name", ["ttft_p50_ms", "ttft_p95_ms"])
def test_ttft_quantiles_match_percentile_and_the_cluster_ci(llm, report_of, name) -> None:  # type: ignore[no-untyped-def]
    level = {"ttft_p50_ms": 0.5, "ttft_p95_ms": 0.95}[name]
    report = report_of()
    m = _metric(report, name)
    reqs = [r for r in ref.served(llm.log.requests, llm.phase) if r["status"] == "ok" and r["ttft_ms"] is not None]
    for v in ("control", "treatment"):
        x = np.array([r["ttft_ms"] for r in reqs if r["variant"] == v])
        u = np.array([r["unit_id"] for r in reqs if r["variant"] == v])
        got = m["variants"][v]
        assert got["requests"] == x.size
        assert got["estimate"] == pytest.approx(float(np.percentile(x, level * 100)), rel=SKETCH_ACCURACY)
        _, inverse = np.unique(u, return_inverse=True)
        indicator = RatioStats.from_values(np.bincount(inverse, weights=(x <= got["estimate"]).astype(float)),
                                           np.bincount(inverse).astype(float))
        ranks = quantile_ranks(level, x.size, indicator)
        assert ranks.valid
        xs = np.sort(x)
        assert (got["ci_lower"], got["ci_upper"]) == pytest.approx(
            (xs[ranks.rank_lower - 1], xs[ranks.rank_upper - 1]), rel=SKETCH_ACCURACY)
    # the TTFT sketch is its own: latency's quantiles are not the TTFT's
    assert m["variants"]["control"]["estimate"] != _metric(report, "latency_" + name[5:])["variants"]["control"][
        "estimate"]


def test_sampled_ttft_unit_step_is_the_recipe_on_the_sampled_units(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1", metrics=METRICS)
    rng = np.random.default_rng(4)
    for i in range(3200):
        unit, variant = f"u{i}", "treatment" if i % 2 else "control"
        for _ in range(int(rng.integers(1, 4))):
            f.request(unit, variant, 300.0, ttft_ms=float(rng.lognormal(3.2, 0.5)))
    f.flush()
    exact, sampled = report_of(), report_of(exact_quantile_rows=0, min_sample_units=30)
    assert sampled["options"]["quantiles"]["unit_step"] == "sample"
    for v in ("control", "treatment"):
        rows = [r for r in f.log.requests if r["variant"] == v]
        x = np.array([r["ttft_ms"] for r in rows])
        u = np.array([r["unit_id"] for r in rows])
        keep = np.array([in_sample(unit) for unit in u])
        for name, level in (("ttft_p50_ms", 0.5), ("ttft_p95_ms", 0.95)):
            got = _metric(sampled, name)["variants"][v]
            assert got["estimate"] == _metric(exact, name)["variants"][v]["estimate"]
            _, inv = np.unique(u[keep], return_inverse=True)
            indicator = RatioStats.from_values(np.bincount(inv, weights=(x[keep] <= got["estimate"]).astype(float)),
                                               np.bincount(inv).astype(float)).scaled_to(len(set(u)))
            ranks = quantile_ranks(level, x.size, indicator)
            xs = np.sort(x)
            assert (got["ci_lower"], got["ci_upper"]) == pytest.approx(
                (xs[ranks.rank_lower - 1], xs[ranks.rank_upper - 1]), rel=SKETCH_ACCURACY)


def test_an_engine_without_a_price_makes_cost_unavailable_never_zero(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1", metrics=METRICS)
    _fill(f, np.random.default_rng(12), priced={"control": True, "treatment": False})
    report = report_of()
    reason = "engine 'v2-int4' has no price (cost_per_hour in the engine registry)"
    for name in ("cost_per_request", "cost_per_purchase"):
        m = _metric(report, name)
        assert m["variants"]["treatment"]["estimate"] is None and m["variants"]["treatment"]["error"] == reason
        assert m["variants"]["control"]["estimate"] > 0 and m["variants"]["control"]["error"] is None
        comp = m["comparisons"][0]
        assert comp["error"] == reason and comp["absolute"] is None and comp["p_value"] is None
        assert comp["adjusted_p_value"] is None and comp["significant"] is False
    guard = {g["metric"]: g["status"] for g in report["recommendations"][0]["guardrails"]}
    assert guard["cost_per_request"] != "ok"
    assert _metric(report, "engine_ms")["comparisons"][0]["error"] is None  # engine time is still measured
