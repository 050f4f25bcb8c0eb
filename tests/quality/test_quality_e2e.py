"""Output quality end to end, embedded mode: the real API, real tiny engines, real SQLite.

Requests are served through /v1/infer, scored off the request path by the quality service, and
read back from the report's quality section.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select

from abtest.app import create_app
from abtest.models import QualityScore, RequestLog
from abtest.services.keys import create_key
from abtest.services.quality import QualityService
from tests.conftest import clear_tables, experiment_payload
from tests.serving.harness import infer_many

pytest.importorskip("torch")

PROMPTS = ["def fibonacci(n):", "import os\n", "class Queue:", "The quick brown fox", "return x +"]


@pytest.fixture
def quality_app(sqlite_url, quality_registry):  # type: ignore[no-untyped-def]
    clear_tables(sqlite_url)
    app = create_app({"database_url": sqlite_url, "engine_registry": quality_registry, "cache_ttl_s": 0.0,
                      "preload_engines": False, "infer_timeout_s": 60.0, "guardrail_interval_s": 0.0})
    services = app.extensions["abtest"]
    with services.db.transaction() as session:
        headers = {"Authorization": f"Bearer {create_key(session, 'quality', 'admin')}"}
    yield app, headers
    services.close()


def start(app: Any, headers: dict[str, str], reference: str, sample: float = 1.0) -> None:
    variants = [{"key": "control", "engine": "v1-fp32", "weight": 0.5, "control": True},
                {"key": "treatment", "engine": "v2-int4", "weight": 0.5, "quality_reference": reference}]
    client = app.test_client()
    reply = client.post("/v1/experiments", json=experiment_payload("q", variants=variants, quality_sample=sample),
                        headers=headers)
    assert reply.status_code == 201, reply.get_json()
    assert client.post("/v1/experiments/q/start", headers=headers).status_code == 200


def calls(n: int, units: int = 12) -> list[dict[str, Any]]:
    return [{"experiment": "q", "unit_id": f"u{i % units}", "prompt": PROMPTS[i % len(PROMPTS)],
             "max_new_tokens": 8} for i in range(n)]


def report_quality(app: Any, headers: dict[str, str]) -> dict[str, Any]:
    reply = app.test_client().get("/v1/experiments/q/report", headers=headers)
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()["quality"]


def test_live_scores_reach_the_report(quality_app) -> None:
    app, headers = quality_app
    start(app, headers, reference="v2-fp32")
    replies = infer_many(app, headers, calls(40), concurrency=4)
    assert [s for s, _ in replies] == [200] * 40
    services = app.extensions["abtest"]
    assert services.quality.wait_idle(300)
    served = Counter(body["variant"] for _, body in replies)

    quality = report_quality(app, headers)
    assert quality["sample"] == 1.0 and quality["skipped"] == 0 and quality["dropped"] == 0
    results = {(r["comparison"], r["variant"]): r for r in quality["results"]}
    assert set(results) == {("treatment_vs_control", "treatment"), ("reference", "treatment")}
    tvc, ref = results["treatment_vs_control", "treatment"], results["reference", "treatment"]
    assert (tvc["generator"], tvc["scorer"], tvc["method"]) == ("v1-fp32", "v2-int4", "logprobs")
    assert (ref["generator"], ref["scorer"], ref["method"]) == ("v2-int4", "v2-fp32", "logprobs")
    assert tvc["scored"] == served["control"] and ref["scored"] == served["treatment"]
    units = {v: len({c["unit_id"] for c, (_, b) in zip(calls(40), replies) if b["variant"] == v})
             for v in ("control", "treatment")}
    assert tvc["units"] == units["control"] and ref["units"] == units["treatment"]
    for r in (tvc, ref):
        a, kl = r["agreement"], r["kl"]
        assert 0.0 <= a["estimate"] <= 1.0 and a["ci_lower"] <= a["estimate"] <= a["ci_upper"]
        assert kl["estimate"] >= 0.0 and kl["ci_lower"] <= kl["estimate"] <= kl["ci_upper"]
    # INT4 tracks its own full-precision checkpoint far more closely than another model
    assert ref["kl"]["ci_upper"] < tvc["kl"]["ci_lower"]
    assert ref["agreement"]["estimate"] >= tvc["agreement"]["estimate"]

    with services.db.session() as session:
        rows = list(session.scalars(select(QualityScore)))
        request_ids = {r.request_id for r in session.scalars(select(RequestLog))}
    assert len(rows) == 40 and {r.status for r in rows} == {"ok"}
    assert {r.request_id for r in rows} == request_ids  # each served request scored once
    assert sum(r.tokens for r in rows if r.comparison == "reference") > 0


def test_a_failing_scorer_changes_neither_the_answer_nor_the_request_log(quality_app) -> None:
    app, headers = quality_app
    start(app, headers, reference="broken")  # registered, but its checkpoint is missing
    first = infer_many(app, headers, calls(10), concurrency=1)
    services = app.extensions["abtest"]
    assert services.quality.wait_idle(300)
    again = infer_many(app, headers, calls(10), concurrency=1)  # the scorer has failed meanwhile
    assert services.quality.wait_idle(300)
    assert [s for s, _ in first + again] == [200] * 20
    assert [b["text"] for _, b in first] == [b["text"] for _, b in again]  # greedy, one at a time
    with services.db.session() as session:
        logged = list(session.scalars(select(RequestLog)))
        scores = list(session.scalars(select(QualityScore)))
    assert len(logged) == 20 and {(r.status, r.error_code) for r in logged} == {("ok", None)}
    treated = sum(1 for _, b in first + again if b["variant"] == "treatment")
    failed = [s for s in scores if s.comparison == "reference"]
    assert len(failed) == treated and {(s.status, s.error_code) for s in failed} == {("failed", "engine_unavailable")}
    quality = report_quality(app, headers)
    assert quality["skipped"] == treated and quality["dropped"] == 0
    assert {r["comparison"] for r in quality["results"]} == {"treatment_vs_control"}


def test_a_full_scoring_queue_drops_jobs_and_the_report_counts_them(quality_app) -> None:
    app, headers = quality_app
    start(app, headers, reference="v2-fp32")
    services = app.extensions["abtest"]
    warm = infer_many(app, headers, calls(2), concurrency=1)  # the engines are loaded
    assert services.quality.wait_idle(300)
    from abtest.services.experiments import get_experiment, to_config
    from abtest.services.inference import InferParams

    with services.db.session() as session:
        config = to_config(get_experiment(session, "q"))
    control = config.control
    tiny = QualityService(services.inference.dispatcher, services.db, 60.0, queue_size=1, workers=1)
    try:
        params = InferParams(prompt="def fibonacci(n):", max_new_tokens=8)
        for i in range(30):  # one job runs, one waits, the rest find the queue full
            row = {"request_id": f"burst-{i}", "experiment_id": config.id, "phase": config.phase,
                   "variant": control.key, "engine": control.engine, "unit_id": f"b{i}", "in_experiment": True}
            tiny.served(row, params, {"text": "    return n"}, config, None)
        assert tiny.wait_idle(300)
    finally:
        tiny.close()
    with services.db.session() as session:
        burst = [s for s in session.scalars(select(QualityScore)) if s.request_id.startswith("burst-")]
    statuses = Counter(s.status for s in burst)
    assert len(burst) == 30 and statuses["ok"] >= 1 and statuses["dropped"] >= 1
    assert set(statuses) <= {"ok", "dropped"}
    assert {s.error_code for s in burst if s.status == "dropped"} == {"queue_full"}
    quality = report_quality(app, headers)
    assert quality["dropped"] == statuses["dropped"] and quality["skipped"] == 0
    tvc = next(r for r in quality["results"] if r["comparison"] == "treatment_vs_control")
    assert tvc["scored"] == statuses["ok"] + sum(1 for _, b in warm if b["variant"] == "control")
