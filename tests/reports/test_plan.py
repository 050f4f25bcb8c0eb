"""POST /v1/plan and ``abtest plan``: plans from a given baseline and from a running
experiment's history (its control's baseline and variance are the report's; SQLite and
PostgreSQL)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from click.testing import CliRunner

from abtest.cli import cli
from abtest.services.planner import parse_plan_request, plan

METRICS = [{"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary"},
           {"name": "revenue", "event": "purchase", "kind": "sum"}]


def _seed(f, now, n=120, rng_seed=3):  # type: ignore[no-untyped-def]
    """Units first exposed over the last 4 days, 1-3 requests each, some conversions."""
    rng = np.random.default_rng(rng_seed)
    units = []
    for i in range(n):
        variant = "treatment" if i % 2 else "control"
        seen = now - timedelta(hours=2 + (i * 96 // n))
        f.exposure(f"u{i}", variant, seen)
        lat = [float(rng.gamma(4.0, 60.0)) for _ in range(int(rng.integers(1, 4)))]
        for k, value in enumerate(lat):
            f.request(f"u{i}", variant, value, at=seen + timedelta(seconds=10 * k + 1))
        converted = bool(rng.random() < 0.3)
        if converted:
            f.event(f"u{i}", "purchase", seen + timedelta(minutes=5), float(rng.integers(1, 9)))
        units.append((variant, lat, converted))
    f.flush()
    return units


def _delta_variance(nums, dens):  # type: ignore[no-untyped-def]
    m, d = np.asarray(nums, float), np.asarray(dens, float)
    r = m.sum() / d.sum()
    return float(np.var(m - r * d, ddof=1) / d.mean() ** 2)


def test_plan_endpoint_with_a_given_baseline(client, admin) -> None:  # type: ignore[no-untyped-def]
    payload = {"kind": "binary", "baseline": 0.1, "mde": 0.1, "variants": 3, "daily_units": 2000}
    reply = client.post("/v1/plan", json=payload, headers=admin)
    assert reply.status_code == 200, reply.get_json()
    body = reply.get_json()
    want = plan(None, parse_plan_request(payload)).to_json()
    assert body == want and list(body)[:3] == ["units_per_variant", "total_units", "days"]
    assert body["days"] == math.ceil(body["total_units"] / 2000) and body["comparison_alpha"] == 0.025
    assert body["source"] == {"type": "given"} and body["inputs"]["daily_units"] == 2000


@pytest.mark.parametrize("payload, field", [
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "alpha": 0.7}, "alpha"),
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "power": 0.3}, "power"),
    ({"kind": "binary", "baseline": 0.1, "mde": -1}, "mde"),
    ({"kind": "binary", "baseline": 1.5, "mde": 0.1}, "baseline"),
    ({"kind": "mean", "baseline": 3, "mde": 0.1}, "sd"),
    ({"kind": "binary", "baseline": 0.1, "mde": 0.1, "variants": 0}, "variants"),
    ({"kind": "binary", "baseline": 0.1, "margin": 0.1, "coverage": 0}, "coverage"),
    ({"experiment": "exp-1", "metric": "nope", "mde": 0.1}, "metric"),
    ({"experiment": "exp-1", "metric": "latency_p95_ms", "mde": 0.1}, "metric"),
])
def test_plan_endpoint_bad_input_is_422_naming_the_field(client, admin, make_experiment, payload, field) -> None:  # type: ignore[no-untyped-def]
    make_experiment("exp-1", start=True)
    reply = client.post("/v1/plan", json=payload, headers=admin)
    assert reply.status_code == 422, reply.get_json()
    assert reply.get_json()["error"]["details"]["field"] == field


def test_plan_endpoint_unknown_experiment_scope_and_body(client, admin, sdk) -> None:  # type: ignore[no-untyped-def]
    missing = client.post("/v1/plan", json={"experiment": "nope", "metric": "latency_ms", "mde": 0.1}, headers=admin)
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    assert client.post("/v1/plan", json={"kind": "binary", "baseline": 0.1, "mde": 0.1},
                       headers=sdk).status_code == 403
    assert client.post("/v1/plan", data="[", headers={**admin, "Content-Type": "application/json"}).status_code == 400


def test_plan_from_history_uses_the_reports_control_baseline(factory, client, admin, services, report_of) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(timezone.utc)
    f = factory(metrics=METRICS)
    units = _seed(f, now)
    report = {m["name"]: m for m in report_of()["metrics"]}
    control = [u for u in units if u[0] == "control"]
    for metric, payload in (("latency_ms", {"mde": 0.05}), ("conversion", {"margin": 0.1}),
                            ("revenue", {"mde": 0.2, "variants": 3})):
        reply = client.post("/v1/plan", json={"experiment": "exp-1", "metric": metric, **payload}, headers=admin)
        assert reply.status_code == 200, reply.get_json()
        body = reply.get_json()
        shown = report[metric]["variants"]["control"]
        assert body["baseline"] == pytest.approx(shown["estimate"], rel=1e-12)
        assert body["source"]["control_units"] == shown["units"] and body["source"]["type"] == "history"
        if metric == "latency_ms":  # the delta-method per-unit variance of the ratio, from the rows
            assert body["kind"] == "mean" and body["direction"] == "decrease"
            assert body["variance"] == pytest.approx(_delta_variance([sum(u[1]) for u in control],
                                                                     [len(u[1]) for u in control]), rel=1e-9)
            assert body["variance"] == pytest.approx(shown["se"] ** 2 * shown["units"], rel=1e-9)
        if metric == "conversion":  # a rate: planned with p (1 - p)
            p = np.mean([u[2] for u in control])
            assert body["kind"] == "binary" and body["baseline"] == pytest.approx(p)
            assert body["variance"] == pytest.approx(p * (1 - p)) and body["test"] == "non_inferiority"
        # the same numbers as a plan with that baseline given
        given = {"kind": body["kind"], "baseline": body["baseline"], "direction": body["direction"], **payload}
        if body["kind"] == "mean":
            given["variance"] = body["variance"]
        assert body["units_per_variant"] == plan(None, parse_plan_request(given)).units_per_variant
        assert body["days"] is not None and body["daily_units"] > 0


def test_history_traffic_is_first_exposures_per_day(factory, services) -> None:  # type: ignore[no-untyped-def]
    now = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    f = factory(metrics=METRICS, coverage=0.5)
    f.exposure("old", "control", now - timedelta(days=10))
    _seed(f, now)  # 120 units over the last 4 days (2 h to 98 h ago), then the flush
    request = parse_plan_request({"experiment": "exp-1", "metric": "latency_ms", "mde": 0.05, "traffic_days": 7})
    with services.db.session() as session:
        got = plan(session, request, now=now)
    # 120 first exposures in the last 7 days (the one 10 days ago is outside), at coverage 0.5
    assert got.source["measured_daily_units"] == pytest.approx(120 / 7)
    assert got.daily_units == pytest.approx(120 / 7 / 0.5) and got.coverage == 0.5
    assert got.days == math.ceil(got.total_units / (120 / 7))
    doubled = parse_plan_request({"experiment": "exp-1", "metric": "latency_ms", "mde": 0.05, "coverage": 1.0})
    with services.db.session() as session:
        full = plan(session, doubled, now=now)
    assert full.days == math.ceil(full.total_units / (2 * 120 / 7))


def test_history_without_data_is_422_on_metric(make_experiment, services) -> None:  # type: ignore[no-untyped-def]
    from abtest.errors import ValidationError

    make_experiment("exp-1", start=True)
    with services.db.session() as session, pytest.raises(ValidationError) as caught:
        plan(session, parse_plan_request({"experiment": "exp-1", "metric": "latency_ms", "mde": 0.05}))
    assert caught.value.details["field"] == "metric"


def test_plan_command_given_and_from_history(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import experiment_payload

    from .factories import Factory

    url = f"sqlite:///{tmp_path / 'plan.sqlite'}"
    monkeypatch.setenv("ABTEST_DATABASE_URL", url)
    monkeypatch.setenv("ABTEST_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    runner = CliRunner()
    given = runner.invoke(cli, ["plan", "--kind", "binary", "--baseline", "0.1", "--mde", "0.1", "--json"])
    assert given.exit_code == 0, given.output
    want = plan(None, parse_plan_request({"kind": "binary", "baseline": 0.1, "mde": 0.1})).to_json()
    assert json.loads(given.stdout) == want
    text = runner.invoke(cli, ["plan", "--kind", "mean", "--baseline", "300", "--sd", "80", "--margin", "0.02",
                               "--daily-units", "1000", "--variants", "3"])
    assert text.exit_code == 0 and "units per variant" in text.stdout and "day(s)" in text.stdout
    bad = runner.invoke(cli, ["plan", "--kind", "binary", "--baseline", "0.1", "--mde", "0.1", "--alpha", "0.9"])
    assert bad.exit_code == 2 and "alpha" in bad.output
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    spec = tmp_path / "exp.json"
    spec.write_text(json.dumps(experiment_payload("exp-1")))
    for args in (["experiments", "create", "-f", str(spec)], ["experiments", "start", "exp-1"]):
        assert runner.invoke(cli, args).exit_code == 0
    f = Factory(url, "exp-1")
    _seed(f, datetime.now(timezone.utc))
    f.close()
    hist = runner.invoke(cli, ["plan", "--experiment", "exp-1", "--metric", "latency_ms", "--mde", "0.05", "--json"])
    assert hist.exit_code == 0, hist.output
    body = json.loads(hist.stdout)
    assert body["source"]["experiment"] == "exp-1" and body["units_per_variant"] > 0
    missing = runner.invoke(cli, ["plan", "--experiment", "nope", "--metric", "latency_ms", "--mde", "0.05"])
    assert missing.exit_code == 1 and "not_found" in missing.output
    assert "--traffic-days" in runner.invoke(cli, ["plan", "--help"]).stdout
