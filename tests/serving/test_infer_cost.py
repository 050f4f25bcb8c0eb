"""/v1/infer stores what the cost and LLM metrics read: finish reason, decode and compute time,
and the cost at the engine's price (NULL for an engine without one), embedded, on real tiny
engines and SQLite; the report then shows cost per request for the priced engine only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abtest.reports import ReportOptions, build_report
from abtest.services.keys import create_key

from .harness import infer_many, outcome_rows
from .test_infer_e2e import PROMPTS, make_app, start_experiment

PRICE = 1.20


@pytest.fixture
def priced_registry(tiny_registry, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """The tiny engines, v1-fp32 at ``PRICE`` per hour, v2-int4 without a price."""
    entries = json.loads(Path(tiny_registry).read_text())["engines"]
    for e in entries:
        e["cost_per_hour"] = PRICE if e["name"] == "v1-fp32" else None
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"engines": entries}))
    return str(path)


def test_infer_rows_carry_finish_reason_compute_time_and_cost(sqlite_url, priced_registry) -> None:  # type: ignore[no-untyped-def]
    app = make_app(sqlite_url, priced_registry)
    services = app.extensions["abtest"]
    try:
        with services.db.transaction() as session:
            headers = {"Authorization": f"Bearer {create_key(session, 'cost', 'admin')}"}
        start_experiment(app, headers, metrics=[
            {"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary"},
            {"name": "cost_per_request", "role": "secondary"}])
        calls = [{"experiment": "e2e", "unit_id": f"unit-{i % 30}", "prompt": PROMPTS[i % len(PROMPTS)],
                  "max_new_tokens": 2 + i % 5} for i in range(60)]
        replies = infer_many(app, headers, calls, concurrency=8)
        assert all(code == 200 for code, _ in replies), replies[:3]
        rows = outcome_rows(services)
        assert len(rows) == 60 and {r.engine for r in rows} == {"v1-fp32", "v2-int4"}
        for r in rows:
            assert r.status == "ok" and r.finish_reason in ("stop", "length")
            assert r.compute_ms is not None and r.compute_ms > 0 and r.decode_ms is not None and r.decode_ms >= 0
            if r.completion_tokens == 1:
                assert r.decode_ms == 0
            if r.engine == "v1-fp32":
                assert r.cost == pytest.approx(r.compute_ms / 3.6e6 * PRICE, rel=1e-12)
            else:
                assert r.cost is None  # no price: no cost, never a zero
        # with 2 to 6 new tokens and no stop string, completions reach the length limit
        assert any(r.finish_reason == "length" for r in rows)
        with services.db.session() as session:
            report = build_report(session, "e2e", ReportOptions()).to_json()
        m = next(x for x in report["metrics"] if x["name"] == "cost_per_request")
        assert m["variants"]["control"]["estimate"] > 0
        assert m["variants"]["treatment"]["error"] == (
            "engine 'v2-int4' has no price (cost_per_hour in the engine registry)")
        assert m["comparisons"][0]["p_value"] is None and "note" not in m
    finally:
        services.close()
