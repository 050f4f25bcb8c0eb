"""The report of a sticky experiment after a ramp checks SRM against the shares actually
expected: only units assigned in the phase follow its weights; units kept from the earlier
phase follow theirs. Its effect estimates are post-stratified by allocation cohort: a time
trend does not leak into them (the naive pooled difference would be biased)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import numpy as np
from scipy.stats import norm

from abtest.client import definitions as defs
from abtest.evaluator import assign
from abtest.stats import srm_test


def _variants(treatment: float) -> list[dict]:
    return [{"key": "control", "engine": "v1-fp32", "weight": 1 - treatment, "control": True},
            {"key": "treatment", "engine": "v2-int4", "weight": treatment}]


def _exposures(client, sdk, config, units, *, fresh, carried=None):  # type: ignore[no-untyped-def]
    items: list[dict] = []
    for unit in units:
        variant = carried[unit] if carried else assign(config, unit).variant
        items.append({"exposure_id": f"{config.phase}-{unit}", "experiment": config.key, "phase": config.phase,
                      "unit_id": unit, "variant": variant, "first_seen": "2026-01-01T00:00:00Z",
                      "last_seen": "2026-01-01T00:00:00Z", "sticky": fresh})
    for start in range(0, len(items), 200):  # the test app takes bodies up to 64 KiB
        reply = client.post("/v1/exposures", json={"exposures": items[start:start + 200]}, headers=sdk)
        assert reply.get_json()["rejected"] == []
    return {i["unit_id"]: i["variant"] for i in items}


def _config(client, sdk):  # type: ignore[no-untyped-def]
    return defs.parse(client.get("/v1/sdk/definitions", headers=sdk).get_json())[1]["ramp"]


def test_srm_after_a_sticky_ramp_counts_only_the_phases_own_units(client, admin, sdk, make_experiment) -> None:
    make_experiment("ramp", start=True, sticky=True, variants=_variants(0.1))
    old = [f"old-{i}" for i in range(3000)]
    kept = _exposures(client, sdk, _config(client, sdk), old, fresh=True)
    client.patch("/v1/experiments/ramp", json={"variants": _variants(0.5)}, headers=admin)
    phase2 = _config(client, sdk)
    assert phase2.phase == 2
    _exposures(client, sdk, phase2, old, fresh=False, carried=kept)  # they come back, keep their variant
    new = _exposures(client, sdk, phase2, [f"new-{i}" for i in range(3000)], fresh=True)

    srm = client.get("/v1/experiments/ramp/report", headers=admin).get_json()["srm"]
    counts = {v["variant"]: v["units"] for v in srm["variants"]}
    assert counts == {k: sum(v == k for v in new.values()) for k in ("control", "treatment")}
    assert srm["flagged"] is False
    # what the check would say if it tested every phase-2 unit against the phase-2 weights
    everyone = [sum(v == k for v in {**kept, **new}.values()) for k in ("control", "treatment")]
    assert srm_test(everyone, [0.5, 0.5]).flagged


def _conversions(client, sdk, units) -> None:  # type: ignore[no-untyped-def]
    events = [{"event_id": f"buy-{u}", "unit_id": u, "name": "purchase", "timestamp": "2026-01-01T01:00:00Z"}
              for u in units]
    for start in range(0, len(events), 200):
        reply = client.post("/v1/events", json={"events": events[start:start + 200]}, headers=sdk)
        assert reply.status_code == 202 and reply.get_json()["rejected"] == []


def test_a_sticky_ramp_is_analysed_per_allocation_cohort(client, admin, sdk, make_experiment) -> None:
    """Ramp 10 % -> 50 %; conversion rises over time (cohort 1 baseline 0.2, cohort 2 0.4) and
    the treatment adds 0.1 in both. The treatment is mostly cohort-2 units, so the naive pooled
    difference picks up the trend; the report's estimate is the per-cohort one."""
    effect, baselines = 0.1, (0.2, 0.4)
    rng = np.random.default_rng(20261202)
    make_experiment("ramp", start=True, sticky=True, variants=_variants(0.1))
    old = [f"old-{i}" for i in range(2000)]
    kept = _exposures(client, sdk, _config(client, sdk), old, fresh=True)
    client.patch("/v1/experiments/ramp", json={"variants": _variants(0.5)}, headers=admin)
    phase2 = _config(client, sdk)
    _exposures(client, sdk, phase2, old, fresh=False, carried=kept)
    new = _exposures(client, sdk, phase2, [f"new-{i}" for i in range(2000)], fresh=True)
    cohorts = []
    for assigned, base in zip((kept, new), baselines):
        treated = np.array([v == "treatment" for v in assigned.values()])
        y = (rng.random(len(assigned)) < base + effect * treated).astype(float)
        _conversions(client, sdk, [u for u, hit in zip(assigned, y) if hit])
        cohorts.append((treated, y))

    body = client.get("/v1/experiments/ramp/report", headers=admin).get_json()
    metric = next(m for m in body["metrics"] if m["name"] == "conversion")
    got = metric["comparisons"][0]["absolute"]
    # independent per-cohort computation: difference of means, weights N_k / N
    total = sum(len(y) for _, y in cohorts)
    est = sum(len(y) / total * (y[t].mean() - y[~t].mean()) for t, y in cohorts)
    var = sum((len(y) / total) ** 2 * (y[t].var(ddof=1) / t.sum() + y[~t].var(ddof=1) / (~t).sum())
              for t, y in cohorts)
    se = float(np.sqrt(var))
    assert abs(got["estimate"] - est) < 1e-9 and abs(got["se"] - se) < 1e-9
    assert abs(got["ci_lower"] - (est - norm.ppf(0.975) * se)) < 1e-9
    assert abs(metric["comparisons"][0]["p_value"] - 2 * norm.sf(abs(est) / se)) < 1e-9
    assert got["ci_lower"] <= effect <= got["ci_upper"]
    treated_all = np.concatenate([t for t, _ in cohorts])
    y_all = np.concatenate([y for _, y in cohorts])
    naive = y_all[treated_all].mean() - y_all[~treated_all].mean()
    half_width = (got["ci_upper"] - got["ci_lower"]) / 2
    assert naive - effect > half_width  # what pooling every unit would have said: biased up by the trend
    assert metric["estimator"] == {
        "estimator": "post-stratified by allocation cohort",
        "cohorts": [{"phase": k + 1, "units": {"control": int((~t).sum()), "treatment": int(t.sum())}}
                    for k, (t, _) in enumerate(cohorts)]}
    p95 = next(m for m in body["metrics"] if m["name"] == "latency_p95_ms")
    assert p95["estimator"]["estimator"] == "pooled, not adjusted for allocation cohorts"
    html = client.get("/v1/experiments/ramp/report?format=html", headers=admin).get_data(as_text=True)
    assert "post-stratified by allocation cohort (phase 1: 2,000 units, phase 2: 2,000 units)" in html


def test_a_sticky_experiment_with_one_cohort_is_analysed_as_before(client, admin, sdk, make_experiment) -> None:
    make_experiment("steady", start=True, sticky=True, variants=_variants(0.5))
    config = defs.parse(client.get("/v1/sdk/definitions", headers=sdk).get_json())[1]["steady"]
    assigned = _exposures(client, sdk, config, [f"u-{i}" for i in range(400)], fresh=True)
    _conversions(client, sdk, [u for i, u in enumerate(assigned) if i % 3 == 0])
    body = client.get("/v1/experiments/steady/report", headers=admin).get_json()
    assert all("estimator" not in m for m in body["metrics"])
    conversion = next(m for m in body["metrics"] if m["name"] == "conversion")
    assert conversion["comparisons"][0]["absolute"]["p_value"] is not None


def _ratio(m: np.ndarray, d: np.ndarray) -> tuple[float, float]:
    """A ratio metric's estimate and the variance of it, per-unit linearisation (numpy)."""
    r = m.sum() / d.sum()
    return float(r), float(((m - r * d) / d.mean()).var(ddof=1) / len(m))


def test_ratio_metrics_of_a_sticky_ramp_are_analysed_per_allocation_cohort(
        client, admin, sdk, services, make_experiment) -> None:
    """Latency and error rate from logged requests (the unit rollup), with a trend between
    cohorts (cohort 2 slower and failing more), per cohort and pooled: equal to numpy."""
    rng = np.random.default_rng(7)
    make_experiment("ramp", start=True, sticky=True, variants=_variants(0.1))
    old = [f"old-{i}" for i in range(1500)]
    kept = _exposures(client, sdk, _config(client, sdk), old, fresh=True)
    client.patch("/v1/experiments/ramp", json={"variants": _variants(0.5)}, headers=admin)
    phase2 = _config(client, sdk)
    _exposures(client, sdk, phase2, old, fresh=False, carried=kept)
    new = _exposures(client, sdk, phase2, [f"new-{i}" for i in range(1500)], fresh=True)
    now = datetime.now(timezone.utc)
    per_cohort, futures = [], []
    for assigned, (base, errors) in zip((kept, new), ((100.0, 0.02), (140.0, 0.06))):
        lat, ok, err, tot, treated = [], [], [], [], []
        for unit, variant in assigned.items():
            n = int(rng.integers(1, 4))
            failed = rng.random(n) < errors + 0.02 * (variant == "treatment")
            latency = base - 10.0 * (variant == "treatment") + rng.normal(0, 20, n)
            for fail, ms in zip(failed, latency):
                futures.append(services.outcomes.write_nowait({
                    "request_id": str(uuid.uuid4()), "experiment_id": phase2.id, "phase": 2, "variant": variant,
                    "engine": "v1-fp32", "unit_id": unit, "in_experiment": True, "shadow": False,
                    "status": "error" if fail else "ok", "started_at": now, "finished_at": now,
                    "latency_ms": float(ms)}))
            lat.append(float(np.sum(latency[~failed])))
            ok.append(float((~failed).sum()))
            err.append(float(failed.sum()))
            tot.append(float(n))
            treated.append(variant == "treatment")
        per_cohort.append(tuple(np.array(a) for a in (lat, ok, err, tot, treated)))
    for f in futures:
        f.result(timeout=60)

    body = client.get("/v1/experiments/ramp/report", headers=admin).get_json()
    total = sum(len(c[0]) for c in per_cohort)
    for name, (num, den) in (("latency_ms", (0, 1)), ("error_rate", (2, 3))):
        est = var = 0.0
        for c in per_cohort:
            t, w = c[4].astype(bool), len(c[0]) / total
            (rt, vt), (rc, vc) = _ratio(c[num][t], c[den][t]), _ratio(c[num][~t], c[den][~t])
            est, var = est + w * (rt - rc), var + w * w * (vt + vc)
        metric = next(m for m in body["metrics"] if m["name"] == name)
        got = metric["comparisons"][0]["absolute"]
        assert metric["estimator"]["estimator"] == "post-stratified by allocation cohort"
        assert abs(got["estimate"] - est) < 1e-9, name
        assert abs(got["se"] - float(np.sqrt(var))) < 1e-9, name
