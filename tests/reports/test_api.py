"""The report and export endpoints: formats, parameters, errors, scopes, streamed CSV."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import update

from abtest.models import Experiment
from abtest.reports.csv import RESULT_COLUMNS

from .factories import T0, populate


@pytest.fixture
def small(factory):  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    rng = np.random.default_rng(5)
    populate(f, [(f"u{i}", "control" if i % 2 else "treatment") for i in range(80)], rng,
             lat_mean={"control": 300, "treatment": 280}, err_p={"control": 0.05, "treatment": 0.05},
             conv_p={"control": 0.2, "treatment": 0.2})
    f.event("nobody", "purchase", T0)
    f.event("u1", "purchase", T0 - timedelta(days=1), experiment_key="exp-1")
    f.flush()
    return f


def test_json_report_shape(small, client, admin) -> None:  # type: ignore[no-untyped-def]
    reply = client.get("/v1/experiments/exp-1/report", headers=admin)
    assert reply.status_code == 200
    body = reply.get_json()
    assert body["experiment"]["key"] == "exp-1" and body["experiment"]["status"] == "running"
    assert body["experiment"]["phase"] == 1 and body["experiment"]["started_at"]
    assert [m["name"] for m in body["metrics"]][:5] == [
        "latency_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "error_rate"]
    assert body["recommendation"]["action"] in ("ship", "keep running", "keep control", "roll back")
    assert body["recommendation"]["reasons"]
    units = {v["variant"]: v["units"] for v in body["variants"]}
    assert units == {"control": 40, "treatment": 40}
    comp = body["metrics"][0]["comparisons"][0]
    for field in ("absolute", "relative", "p_value", "adjusted_p_value", "sequential", "chance_to_win",
                  "significant"):
        assert field in comp


def test_csv_has_one_row_per_metric_and_comparison(small, client, admin) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/v1/experiments/exp-1/report", headers=admin).get_json()
    reply = client.get("/v1/experiments/exp-1/report?format=csv", headers=admin)
    assert reply.status_code == 200 and reply.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(reply.get_data(as_text=True))))
    assert tuple(rows[0]) == RESULT_COLUMNS
    assert [r["metric"] for r in rows] == [m["name"] for m in body["metrics"]]
    first = body["metrics"][0]["comparisons"][0]
    assert float(rows[0]["p_value"]) == pytest.approx(first["p_value"], rel=1e-12)
    assert float(rows[0]["relative_effect"]) == pytest.approx(first["relative"]["estimate"], rel=1e-12)


@pytest.mark.parametrize("table", ["exposures", "requests", "events"])
def test_export_streams_the_raw_rows(small, client, admin, table) -> None:  # type: ignore[no-untyped-def]
    reply = client.get(f"/v1/experiments/exp-1/export?table={table}", headers=admin)
    assert reply.status_code == 200 and reply.is_streamed and reply.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(reply.get_data(as_text=True))))
    log = getattr(small.log, table)
    if table == "events":  # the stranger's event concerns no unit of the experiment
        log = [e for e in log if e["unit_id"] != "nobody"]
    assert len(rows) == len(log)
    ident = {"exposures": "unit_id", "requests": "request_id", "events": "event_id"}[table]
    assert sorted(r[ident] for r in rows) == sorted(str(x[ident]) for x in log)


def test_export_batches_are_chunked(small, services) -> None:  # type: ignore[no-untyped-def]
    from abtest.reports.csv import export_csv

    chunks = list(export_csv(services.db.engine, "requests", small.experiment_id, "exp-1", batch=50))
    assert len(chunks) >= len(small.log.requests) // 50
    assert sum(c.count("\n") for c in chunks) == len(small.log.requests) + 1


@pytest.mark.parametrize(("url", "field"), [
    ("/v1/experiments/exp-1/export?table=users", "table"),
    ("/v1/experiments/exp-1/export", "table"),
    ("/v1/experiments/exp-1/report?format=pdf", "format"),
    ("/v1/experiments/exp-1/report?cap=1.5", "cap"),
    ("/v1/experiments/exp-1/report?cap=abc", "cap"),
    ("/v1/experiments/exp-1/report?alpha=0", "alpha"),
])
def test_bad_parameters_are_422_naming_the_field(small, client, admin, url, field) -> None:  # type: ignore[no-untyped-def]
    reply = client.get(url, headers=admin)
    assert reply.status_code == 422
    assert reply.get_json()["error"]["details"]["field"] == field


@pytest.mark.parametrize("path", ["report", "export?table=requests"])
def test_unknown_experiment_is_404(client, admin, path) -> None:  # type: ignore[no-untyped-def]
    reply = client.get(f"/v1/experiments/nope/{path}", headers=admin)
    assert reply.status_code == 404 and reply.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["report", "report?format=html", "export?table=events"])
def test_scopes(small, client, sdk, path) -> None:  # type: ignore[no-untyped-def]
    assert client.get(f"/v1/experiments/exp-1/{path}", headers=sdk).status_code == 403
    assert client.get(f"/v1/experiments/exp-1/{path}").status_code == 401


def test_cap_parameter_reaches_the_report(small, client, admin) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/v1/experiments/exp-1/report?cap=0.95", headers=admin).get_json()
    assert body["options"]["cap"] == 0.95 and body["options"]["cap_value_ms"] > 0


def test_json_keeps_the_documented_key_order(small, client, admin) -> None:  # type: ignore[no-untyped-def]
    text = client.get("/v1/experiments/exp-1/report", headers=admin).get_data(as_text=True)
    keys = list(json.loads(text))
    assert keys[:4] == ["recommendation", "headline", "experiment", "generated_at"]
    assert keys[-4:] == ["timeseries", "latency_histogram", "shadow", "quality"]
    generated = json.loads(text)["generated_at"]
    assert "." not in generated and generated.endswith("+00:00")  # ISO 8601, whole seconds


def test_phase_parameter_reads_an_earlier_phase(small, client, admin, services) -> None:  # type: ignore[no-untyped-def]
    with services.db.transaction() as s:
        s.execute(update(Experiment).where(Experiment.key == "exp-1").values(phase=2))
    for i in range(6):
        small.exposure(f"late{i}", "control", phase=2)
    small.log.exposures[:] = small.log.exposures[-6:]
    small.log.events.clear()
    small.log.requests.clear()
    small.flush()
    earlier = client.get("/v1/experiments/exp-1/report?phase=1", headers=admin).get_json()
    current = client.get("/v1/experiments/exp-1/report", headers=admin).get_json()
    assert {v["variant"]: v["units"] for v in earlier["variants"]} == {"control": 40, "treatment": 40}
    assert {v["variant"]: v["units"] for v in current["variants"]} == {"control": 6, "treatment": 0}
    assert earlier["options"]["phase"] == 1 and current["options"]["phase"] == 2
    html = client.get("/v1/experiments/exp-1/report?phase=1&format=html", headers=admin).get_data(as_text=True)
    assert "phase 1 (an earlier phase; the current one is 2)" in html
    rows = list(csv.DictReader(io.StringIO(client.get("/v1/experiments/exp-1/report?phase=1&format=csv",
                                                      headers=admin).get_data(as_text=True))))
    assert int(rows[0]["control_units"]) == 40
    missing = client.get("/v1/experiments/exp-1/report?phase=3", headers=admin)
    assert missing.status_code == 404
    assert "no phase 3" in missing.get_json()["error"]["message"]
    for bad in ("0", "1.5", "x"):
        reply = client.get(f"/v1/experiments/exp-1/report?phase={bad}", headers=admin)
        assert reply.status_code == 422 and reply.get_json()["error"]["details"]["field"] == "phase"


def test_csv_carries_what_the_verdict_rests_on(small, client, admin) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/v1/experiments/exp-1/report", headers=admin).get_json()
    rows = list(csv.DictReader(io.StringIO(client.get("/v1/experiments/exp-1/report?format=csv",
                                                      headers=admin).get_data(as_text=True))))
    rec = body["recommendations"][0]
    primary = next(r for r in rows if r["metric"] == rec["primary_metric"])
    comp = next(m for m in body["metrics"] if m["name"] == rec["primary_metric"])["comparisons"][0]
    assert primary["decision"] == body["options"]["decision"] == "superiority"
    assert primary["status"] == rec["primary_status"] and primary["action"] == rec["action"]
    assert primary["verdict_interval"] == "absolute"
    assert float(primary["sequential_absolute_ci_lower"]) == comp["sequential"]["absolute"]["ci_lower"]
    assert float(primary["sequential_absolute_ci_upper"]) == comp["sequential"]["absolute"]["ci_upper"]
    for g in rec["guardrails"]:
        row = next(r for r in rows if r["metric"] == g["metric"])
        assert row["status"] == g["status"] and row["margin"] == "0.0"
        assert row["verdict_interval"] == ("" if g["status"] == "unavailable" else "absolute")
    assert all(r["verdict_interval"] == "" for r in rows if r["role"] == "secondary")
