"""Every rate carries its integers: counted straight from the rows the test inserted."""

from __future__ import annotations

import csv
import io

import numpy as np

from .factories import populate


def test_rates_show_numerator_and_denominator_per_variant(factory, client, admin, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    rng = np.random.default_rng(21)
    populate(f, [(f"u{i}", "control" if i % 2 else "treatment") for i in range(160)], rng,
             lat_mean={"control": 300, "treatment": 260}, err_p={"control": 0.05, "treatment": 0.1},
             conv_p={"control": 0.2, "treatment": 0.3})
    f.flush()
    body = report_of()
    metrics = {m["name"]: m for m in body["metrics"]}
    for variant in ("control", "treatment"):
        reqs = [r for r in f.log.requests if r["variant"] == variant and r["status"] not in ("rejected", "unavailable")]
        errors = sum(r["status"] in ("error", "timeout") for r in reqs)
        assert metrics["error_rate"]["variants"][variant]["count"] == {
            "counted": "errors", "numerator": errors, "denominator": len(reqs), "of": "requests"}
        units = {e["unit_id"] for e in f.log.exposures if e["variant"] == variant}
        converted = {e["unit_id"] for e in f.log.events} & units
        assert metrics["conversion"]["variants"][variant]["count"] == {
            "counted": "conversions", "numerator": len(converted), "denominator": len(units), "of": "units"}
        # not rates: no counts
        assert "count" not in metrics["revenue"]["variants"][variant]
        assert "count" not in metrics["latency_ms"]["variants"][variant]
    est = metrics["conversion"]["variants"]["treatment"]
    assert est["estimate"] == est["count"]["numerator"] / est["count"]["denominator"]

    rows = list(csv.DictReader(io.StringIO(client.get("/v1/experiments/exp-1/report?format=csv",
                                                      headers=admin).get_data(as_text=True))))
    row = next(r for r in rows if r["metric"] == "error_rate")
    count = metrics["error_rate"]["variants"]
    assert (int(row["control_numerator"]), int(row["control_denominator"])) == (
        count["control"]["count"]["numerator"], count["control"]["count"]["denominator"])
    assert int(row["treatment_numerator"]) == count["treatment"]["count"]["numerator"]
    assert row["counted"] == "errors" and row["count_of"] == "requests"
    html = client.get("/v1/experiments/exp-1/report?format=html", headers=admin).get_data(as_text=True)
    c = count["control"]["count"]
    assert f"errors {c['numerator']:,} / {c['denominator']:,} requests" in html
