"""The report's numbers against an independent computation from the raw rows (SQLite and PG)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from abtest.stats import SKETCH_ACCURACY, RatioStats, percentile_cont, quantile_ranks

from . import reference as ref
from .factories import T0, populate

REL = 1e-9


@pytest.fixture
def filled(factory):  # type: ignore[no-untyped-def]
    """~300 units with clustered latency, errors, rejections, conversions, plus rows that must
    not count: shadow copies, non-enrolled requests, an older phase, late and unexposed events."""
    f = factory("exp-1")
    rng = np.random.default_rng(7)
    units = [(f"u{i}", "treatment" if rng.random() < 0.5 else "control") for i in range(300)]
    populate(f, units, rng, lat_mean={"control": 320, "treatment": 270},
             err_p={"control": 0.03, "treatment": 0.05}, conv_p={"control": 0.2, "treatment": 0.3})
    for i in range(40):  # noise that every metric must ignore
        f.request(f"u{i}", "treatment", 5000.0, shadow=True, output_match=i % 3 == 0)
        f.request(f"u{i}", "control", 7000.0, in_experiment=False)
        f.request(f"u{i}", "control", 9000.0, phase=f.phase + 1)
        f.event(f"stranger{i}", "purchase", T0 + timedelta(hours=1))
    for i in range(0, 60, 3):  # 3 h after exposure: inside 24 h, outside the 2 h "orders" window
        x = f.log.exposures[i]
        f.event(x["unit_id"], "purchase", x["first_seen"] + timedelta(hours=3), value=10.0)
    f.flush()
    return f


def _metric(report, name):  # type: ignore[no-untyped-def]
    return next(m for m in report["metrics"] if m["name"] == name)


@pytest.mark.parametrize("name", ["latency_ms", "error_rate"])
def test_ratio_metrics_match_delta_method_by_hand(filled, report_of, name) -> None:  # type: ignore[no-untyped-def]
    report = report_of()
    m = _metric(report, name)
    reqs = ref.served(filled.log.requests, filled.phase)
    est = {}
    for v in ("control", "treatment"):
        num, den = ref.per_unit(reqs, v, name)
        r, se = ref.delta_method(num, den)
        est[v] = (r, se, num.size)
        got = m["variants"][v]
        assert got["units"] == num.size
        assert got["estimate"] == pytest.approx(r, rel=REL)
        assert got["se"] == pytest.approx(se, rel=1e-7)
    comp = m["comparisons"][0]
    p, df = ref.welch_from_se(*est["control"], *est["treatment"])
    assert comp["absolute"]["estimate"] == pytest.approx(est["treatment"][0] - est["control"][0], rel=1e-7)
    assert comp["p_value"] == pytest.approx(p, rel=1e-6)
    assert comp["relative"]["estimate"] == pytest.approx(est["treatment"][0] / est["control"][0] - 1, rel=1e-9)


@pytest.mark.parametrize(("name", "kind", "window_h"), [("conversion", "binary", 24), ("revenue", "sum", 24),
                                                          ("orders", "count", 2)])
def test_event_metrics_match_scipy_welch(filled, report_of, name, kind, window_h) -> None:  # type: ignore[no-untyped-def]
    report = report_of()
    m = _metric(report, name)
    values = ref.attributed_values(filled.log, filled.phase, "purchase", window_h * 3600, kind)
    by_unit = {u: v for (u, _), v in values.items()}
    y = {v: ref.unit_values(filled.log.exposures, by_unit, v, filled.phase) for v in ("control", "treatment")}
    for v in y:
        assert m["variants"][v]["units"] == y[v].size
        assert m["variants"][v]["estimate"] == pytest.approx(y[v].mean(), rel=REL)
    welch = sps.ttest_ind(y["treatment"], y["control"], equal_var=False)
    comp = m["comparisons"][0]
    assert comp["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)
    assert comp["absolute"]["estimate"] == pytest.approx(y["treatment"].mean() - y["control"].mean(), rel=1e-9)
    ci = welch.confidence_interval(0.95)
    assert comp["absolute"]["ci_lower"] == pytest.approx(ci.low, rel=1e-6)
    assert comp["absolute"]["ci_upper"] == pytest.approx(ci.high, rel=1e-6)


def test_late_events_fall_outside_the_shorter_window(filled, report_of) -> None:  # type: ignore[no-untyped-def]
    report = report_of()
    revenue, orders = _metric(report, "revenue"), _metric(report, "orders")
    # the 3-hour events (value 10) count for revenue (24 h) but not for orders (2 h)
    late = {x["unit_id"] for x in filled.log.exposures[0:60:3]}
    assert late
    long = ref.attributed_values(filled.log, filled.phase, "purchase", 86400, "count")
    short = ref.attributed_values(filled.log, filled.phase, "purchase", 7200, "count")
    assert sum(long.values()) - sum(short.values()) == len(late)
    n_orders = sum(orders["variants"][v]["estimate"] * orders["variants"][v]["units"] for v in ("control", "treatment"))
    assert n_orders == pytest.approx(sum(short.values()))
    assert revenue["variants"]["control"]["units"] == orders["variants"]["control"]["units"]


@pytest.mark.parametrize("name", ["latency_p50_ms", "latency_p95_ms", "latency_p99_ms"])
def test_quantiles_match_percentile_cont_and_cluster_ci(filled, report_of, name) -> None:  # type: ignore[no-untyped-def]
    """Estimates within the sketch's relative accuracy of numpy's percentile; the CI is the
    recipe of Deng et al. on the raw rows at the report's estimate: exact unit-level indicator
    sums, then the exact order statistics at the resulting ranks (again within the accuracy)."""
    level = {"latency_p50_ms": 0.5, "latency_p95_ms": 0.95, "latency_p99_ms": 0.99}[name]
    report = report_of()
    assert report["options"]["quantiles"]["unit_step"] == "exact"
    m = _metric(report, name)
    reqs = [r for r in ref.served(filled.log.requests, filled.phase) if r["status"] == "ok"]
    for v in ("control", "treatment"):
        x = np.array([r["latency_ms"] for r in reqs if r["variant"] == v])
        u = np.array([r["unit_id"] for r in reqs if r["variant"] == v])
        got = m["variants"][v]
        assert got["requests"] == x.size
        assert got["estimate"] == pytest.approx(float(np.percentile(x, level * 100)), rel=SKETCH_ACCURACY)
        _, inverse = np.unique(u, return_inverse=True)
        indicator = RatioStats.from_values(np.bincount(inverse, weights=(x <= got["estimate"]).astype(float)),
                                           np.bincount(inverse).astype(float))
        ranks = quantile_ranks(level, x.size, indicator)
        if ranks.valid:
            xs = np.sort(x)
            expected = (xs[ranks.rank_lower - 1], xs[ranks.rank_upper - 1])
            assert (got["ci_lower"], got["ci_upper"]) == pytest.approx(expected, rel=SKETCH_ACCURACY)
        else:
            assert got["error"] is not None and got["ci_lower"] is None


def test_srm_block_matches_scipy_chisquare(filled, report_of) -> None:  # type: ignore[no-untyped-def]
    report = report_of()
    counts = [sum(x["variant"] == v and x["phase"] == filled.phase for x in filled.log.exposures)
              for v in ("control", "treatment")]
    expected = sps.chisquare(counts)
    assert [v["units"] for v in report["srm"]["variants"]] == counts
    assert report["srm"]["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert report["srm"]["flagged"] is False


def test_holm_adjustment_across_all_comparisons(filled, report_of) -> None:  # type: ignore[no-untyped-def]
    report = report_of()
    comps = [c for m in report["metrics"] for c in m["comparisons"] if c["p_value"] is not None]
    assert len(comps) == 8  # 5 built-ins + 3 event metrics, one treatment
    _, adjusted, _, _ = multipletests([c["p_value"] for c in comps], method="holm")
    assert [c["adjusted_p_value"] for c in comps] == pytest.approx(list(adjusted), rel=1e-12)
    assert all(c["significant"] == (c["adjusted_p_value"] < 0.05) for c in comps)
    assert report["options"]["multiple_testing"] == {"method": "holm", "family": 8}


def test_variant_block_counts_requests_and_rejections(filled, report_of) -> None:  # type: ignore[no-untyped-def]
    report = report_of()
    reqs = ref.served(filled.log.requests, filled.phase)
    for block in report["variants"]:
        mine = [r for r in reqs if r["variant"] == block["variant"]]
        assert block["requests"] == len(mine)
        assert block["rejected"] == sum(r["status"] == "rejected" for r in mine)
    shadow = {s["variant"]: s for s in report["shadow"]}
    assert shadow["treatment"]["requests"] == 40
    assert shadow["treatment"]["output_matches"] == 14


def test_cap_winsorizes_latency_at_the_pooled_quantile(filled, report_of) -> None:  # type: ignore[no-untyped-def]
    report = report_of(cap=0.9)
    reqs = [r for r in ref.served(filled.log.requests, filled.phase) if r["status"] == "ok"]
    assert report["options"]["cap_value_ms"] == pytest.approx(
        percentile_cont([r["latency_ms"] for r in reqs], 0.9), rel=SKETCH_ACCURACY)
    cap = report["options"]["cap_value_ms"]
    capped = [{**r, "latency_ms": min(r["latency_ms"], cap)} for r in ref.served(filled.log.requests, filled.phase)]
    num, den = ref.per_unit(capped, "control", "latency_ms")
    r, se = ref.delta_method(num, den)
    got = _metric(report, "latency_ms")["variants"]["control"]
    assert got["estimate"] == pytest.approx(r, rel=1e-9)
    assert got["estimate"] < _metric(report_of(), "latency_ms")["variants"]["control"]["estimate"]


def test_timeseries_is_cumulative_and_ends_at_the_totals(filled, report_of) -> None:  # type: ignore[no-untyped-def]
    report = report_of()
    ts = report["timeseries"]
    assert ts["metric"] == "conversion"
    points = ts["series"]["treatment"]
    assert [p["day"] for p in points] == ["2026-11-20", "2026-11-21", "2026-11-22"]
    assert [p["units"] for p in points] == sorted(p["units"] for p in points)
    final = _metric(report, "conversion")["comparisons"][0]
    assert points[-1]["estimate"] == pytest.approx(final["relative"]["estimate"], rel=1e-12)
    assert points[-1]["seq_lower"] == pytest.approx(final["sequential"]["relative"]["ci_lower"], rel=1e-9)
    for p in points:
        assert p["seq_lower"] <= p["ci_lower"] <= p["estimate"] <= p["ci_upper"] <= p["seq_upper"]


def test_latency_histogram_counts_match_numpy(filled, report_of) -> None:  # type: ignore[no-untyped-def]
    assert report_of()["latency_histogram"] is None  # JSON default: no extra scan
    hist = report_of(histogram=True)["latency_histogram"]
    reqs = [r for r in ref.served(filled.log.requests, filled.phase) if r["status"] == "ok"]
    upper, width = hist["upper_ms"], hist["bin_width_ms"]
    p99 = max(np.percentile([r["latency_ms"] for r in reqs if r["variant"] == v], 99) for v in ("control", "treatment"))
    assert upper == pytest.approx(p99 * 1.05, rel=SKETCH_ACCURACY)
    for v in ("control", "treatment"):
        x = np.array([r["latency_ms"] for r in reqs if r["variant"] == v])
        expected = np.bincount(np.minimum((x // width).astype(int), 40), minlength=41)
        got = np.array(hist["counts"][v])
        assert got.sum() == x.size
        # a value sits in another bin only when it is within the sketch's accuracy of a bin edge
        edges = np.arange(1, 41) * width
        near = np.abs(x[:, None] - edges[None, :]) <= SKETCH_ACCURACY * x[:, None]
        assert np.abs(got - expected).sum() <= 2 * int(near.any(axis=1).sum())
