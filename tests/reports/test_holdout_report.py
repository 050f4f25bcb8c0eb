"""The layer's cumulative impact report (GET /v1/layers/<name>/report), recomputed from the raw
rows with numpy/scipy/statsmodels."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps
from sqlalchemy import insert
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from abtest.evaluator import bucket
from abtest.models import HoldoutExposure

from .conftest import METRICS
from .factories import T0
from .reference import delta_method, welch_from_se

SHARE = 0.25


def _welch(holdout: np.ndarray, exposed: np.ndarray) -> tuple[float, float, float, float]:
    """(difference, ci_lower, ci_upper, p) of exposed minus holdout, Welch, by scipy/statsmodels."""
    p = float(sps.ttest_ind(exposed, holdout, equal_var=False).pvalue)
    lo, hi = CompareMeans(DescrStatsW(exposed), DescrStatsW(holdout)).tconfint_diff(alpha=0.05, usevar="unequal")
    return float(exposed.mean() - holdout.mean()), float(lo), float(hi), p


@pytest.fixture
def layer_data(client, admin, factory) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    assert client.put("/v1/layers/home", json={"holdout": SHARE}, headers=admin).status_code == 200
    a = factory("a", layer="home", layer_share=0.5)
    b = factory("b", layer="home", layer_share=0.5,  # revenue is not shared: only a defines it
                metrics=[m for m in METRICS if m["name"] != "revenue"])
    rng = np.random.default_rng(11)
    first: dict[str, Any] = {}
    group: dict[str, str] = {}
    requests: list[dict[str, Any]] = []
    events: list[tuple[str, Any, str | None]] = []
    holdout_rows = []
    for i in range(900):
        unit = f"u{i}"
        f = a if bucket("layer:home", unit) < 0.5 else b
        held = bucket("holdout:home", unit) < SHARE
        seen = T0 + timedelta(minutes=i % 300)
        first[unit], group[unit] = seen, "holdout" if held else "exposed"
        if held:
            holdout_rows.append({"experiment_id": f.experiment_id, "phase": 1, "unit_id": unit, "layer": "home",
                                 "first_seen": seen, "last_seen": seen, "count": 1})
        else:
            f.exposure(unit, "treatment" if rng.random() < 0.5 else "control", seen)
        for k in range(int(rng.integers(1, 5))):
            status = "error" if rng.random() < (0.12 if held else 0.05) else "ok"
            latency = max(1.0, rng.normal(110 if held else 95, 25))
            variant = "control" if held else "treatment"
            requests.append({"unit": unit, "status": status, "latency": latency, "held": held})
            f.request(unit, variant, latency, status, at=seen + timedelta(seconds=k + 1), in_experiment=not held)
        if rng.random() < 0.05:
            requests.append({"unit": unit, "status": "rejected", "latency": 2.0, "held": held})
            f.request(unit, "control", 2.0, "rejected", at=seen, in_experiment=not held)
        if rng.random() < (0.2 if held else 0.3):
            f.event(unit, "purchase", seen + timedelta(hours=1))
            events.append((unit, seen + timedelta(hours=1), None))
        if rng.random() < 0.1:  # inside the conversion's 24 h, outside the orders' 2 h
            f.event(unit, "purchase", seen + timedelta(hours=3))
            events.append((unit, seen + timedelta(hours=3), None))
        if rng.random() < 0.1:  # before the unit's first exposure: counts nowhere
            f.event(unit, "purchase", seen - timedelta(hours=1))
        if rng.random() < 0.1:  # attributed to an experiment outside the layer: ignored
            f.event(unit, "purchase", seen + timedelta(minutes=5), experiment_key="elsewhere")
    # three units in both (the share changed between experiments): counted in neither
    for unit in ("u0", "u1", "u2"):
        f = a if group[unit] == "exposed" else b
        if group[unit] == "exposed":
            holdout_rows.append({"experiment_id": b.experiment_id, "phase": 1, "unit_id": unit, "layer": "home",
                                 "first_seen": first[unit], "last_seen": first[unit], "count": 1})
        else:
            f.exposure(unit, "control", first[unit])
        group[unit] = "both"
    for f in (a, b):
        f.flush()
    with a.engine.begin() as conn:
        conn.execute(insert(HoldoutExposure), holdout_rows)
    return {"first": first, "group": group, "requests": requests, "events": events}


def _report(client, admin, fmt: str = "json"):  # type: ignore[no-untyped-def]
    reply = client.get(f"/v1/layers/home/report?format={fmt}", headers=admin)
    assert reply.status_code == 200, reply.data[:500]
    return reply


def test_units_and_the_holdout_split(client, admin, layer_data) -> None:
    body = _report(client, admin).get_json()
    groups = layer_data["group"]
    n_h = sum(g == "holdout" for g in groups.values())
    n_e = sum(g == "exposed" for g in groups.values())
    assert body["units"] == {"holdout": n_h, "exposed": n_e, "both": 3}
    assert [e["key"] for e in body["experiments"]] == ["a", "b"] and body["holdout"] == SHARE
    expected = sps.chisquare([n_h, n_e], [(n_h + n_e) * SHARE, (n_h + n_e) * (1 - SHARE)]).pvalue
    assert body["holdout_split"]["p_value"] == pytest.approx(expected, rel=1e-9)
    assert {m["name"] for m in body["metrics"]} == {"conversion", "orders", "error_rate", "latency_ms"}


def test_event_metrics_match_scipy_and_statsmodels(client, admin, layer_data) -> None:
    body = {m["name"]: m for m in _report(client, admin).get_json()["metrics"]}
    first, groups = layer_data["first"], layer_data["group"]
    for name, window in (("conversion", timedelta(hours=24)), ("orders", timedelta(hours=2))):
        counts: dict[str, float] = defaultdict(float)
        for unit, at, _ in layer_data["events"]:
            if first[unit] <= at <= first[unit] + window:
                counts[unit] += 1
        values = {u: (min(c, 1.0) if name == "conversion" else c) for u, c in counts.items()}
        arrays = {g: np.array([values.get(u, 0.0) for u in sorted(groups) if groups[u] == g])
                  for g in ("holdout", "exposed")}
        diff, lo, hi, p = _welch(arrays["holdout"], arrays["exposed"])
        m = body[name]
        assert m["holdout"]["mean"] == pytest.approx(arrays["holdout"].mean(), rel=1e-12)
        assert m["exposed"]["mean"] == pytest.approx(arrays["exposed"].mean(), rel=1e-12)
        assert m["difference"]["estimate"] == pytest.approx(diff, rel=1e-9)
        assert (m["difference"]["ci_lower"], m["difference"]["ci_upper"]) == pytest.approx((lo, hi), rel=1e-7)
        assert m["difference"]["p_value"] == pytest.approx(p, rel=1e-7)
        # relative lift exposed / holdout - 1 with its delta-method standard error
        mc, mt = arrays["holdout"].mean(), arrays["exposed"].mean()
        vc, vt = arrays["holdout"].var(ddof=1), arrays["exposed"].var(ddof=1)
        se = np.sqrt(vt / (arrays["exposed"].size * mc**2) + vc * mt**2 / (arrays["holdout"].size * mc**4))
        assert m["relative_lift"]["estimate"] == pytest.approx(mt / mc - 1, rel=1e-9)
        assert m["relative_lift"]["se"] == pytest.approx(se, rel=1e-9)
    # the simulated exposed units convert better (0.3 vs 0.2): the report sees it
    assert body["conversion"]["difference"]["estimate"] > 0 and body["conversion"]["difference"]["p_value"] < 0.05


def test_request_metrics_match_the_delta_method_reference(client, admin, layer_data) -> None:
    body = {m["name"]: m for m in _report(client, admin).get_json()["metrics"]}
    groups = layer_data["group"]
    for name in ("error_rate", "latency_ms"):
        sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for r in layer_data["requests"]:
            if groups[r["unit"]] == "both":
                continue
            if name == "error_rate" and r["status"] != "rejected":
                sums[r["unit"]][0] += r["status"] == "error"
                sums[r["unit"]][1] += 1
            elif name == "latency_ms" and r["status"] == "ok":
                sums[r["unit"]][0] += r["latency"]
                sums[r["unit"]][1] += 1
        refs = {}
        for g in ("holdout", "exposed"):
            units = [u for u in sorted(sums) if groups[u] == g and sums[u][1] > 0]
            m, d = np.array([sums[u][0] for u in units]), np.array([sums[u][1] for u in units])
            refs[g] = (*delta_method(m, d), len(units))
        (rc, sc, nc), (rt, st, nt) = refs["holdout"], refs["exposed"]
        p, _ = welch_from_se(rc, sc, nc, rt, st, nt)
        got = body[name]
        assert (got["holdout"]["units"], got["exposed"]["units"]) == (nc, nt)
        assert got["holdout"]["mean"] == pytest.approx(rc, rel=1e-9)
        assert got["exposed"]["mean"] == pytest.approx(rt, rel=1e-9)
        assert got["difference"]["se"] == pytest.approx(np.hypot(sc, st), rel=1e-7)
        assert got["difference"]["p_value"] == pytest.approx(p, rel=1e-6)
    assert body["error_rate"]["difference"]["estimate"] < 0  # the holdout errs more in the simulation
    assert body["latency_ms"]["difference"]["estimate"] < 0


def test_the_html_page_uses_the_report_styles(client, admin, layer_data) -> None:
    reply = _report(client, admin, "html")
    page = reply.get_data(as_text=True)
    assert reply.mimetype == "text/html"
    for part in ('id="title"', 'id="units"', 'id="holdout-split"', 'id="metrics-table"',
                 'data-metric="conversion"', 'data-metric="latency_ms"', "Layer home"):
        assert part in page
    assert "border-collapse" in page  # the experiment report's style sheet


def test_bad_report_options_are_422(client, admin, layer_data) -> None:
    for query, field in (("format=csv", "format"), ("alpha=0.7", "alpha"), ("alpha=x", "alpha")):
        reply = client.get(f"/v1/layers/home/report?{query}", headers=admin)
        assert reply.status_code == 422 and reply.get_json()["error"]["details"]["field"] == field


def test_a_layer_without_data_reports_empty_groups(client, admin, make_experiment) -> None:
    make_experiment("a", layer="home", layer_share=0.5)  # a draft: no experiment has started
    body = _report(client, admin).get_json()
    assert body["units"] == {"holdout": 0, "exposed": 0, "both": 0} and body["holdout_split"] is None
    assert all(m["difference"] is None and m["error"] for m in body["metrics"])
