"""The spec field ``scheduler`` as served, embedded and through a real Celery worker: ``static``
(the default) and ``continuous`` (a module of its own: no other module's workers consume its
Redis queues)."""

from __future__ import annotations

import pytest

from abtest.services.keys import create_key

from .harness import WorkerProcess, infer_many, outcome_rows
from .test_infer_e2e import PROMPTS, make_app, start_experiment


@pytest.fixture(scope="module", params=["continuous", "static"])
def scheduler_registry(request, tiny_registry, tmp_path_factory) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(the tiny engines' registry with the spec field ``scheduler`` as the param, that value);
    the default's entry leaves the field out."""
    import json
    from pathlib import Path

    from engines.spec import EngineSpec

    data = json.loads(Path(tiny_registry).read_text())
    for entry in data["engines"]:
        if request.param == EngineSpec.scheduler:
            entry.pop("scheduler", None)  # the default
        else:
            entry["scheduler"] = request.param
    path = tmp_path_factory.mktemp(request.param) / "registry.json"
    path.write_text(json.dumps(data))
    return str(path), request.param


@pytest.mark.parametrize("mode", ["embedded", "celery"])
def test_the_spec_s_scheduler_serves(mode, scheduler_registry, request, tmp_path) -> None:
    from engines.continuous import ContinuousBatchingScheduler
    from engines.scheduler import BatchingScheduler

    registry, kind = scheduler_registry
    worker = None
    if mode == "embedded":
        app = make_app(request.getfixturevalue("sqlite_url"), registry)
    else:
        redis_url = request.getfixturevalue("redis_url")
        env = {"ABTEST_BROKER_URL": redis_url, "ABTEST_ENGINE_REGISTRY": registry}
        worker = WorkerProcess("v2-int4", env, str(tmp_path / "worker.log")).start()
        worker.wait_ready()
        app = make_app(request.getfixturevalue("pg_url"), registry, broker_url=redis_url)
    services = app.extensions["abtest"]
    try:
        with services.db.transaction() as session:
            headers = {"Authorization": f"Bearer {create_key(session, 'e2e', 'admin')}"}
        start_experiment(app, headers, variants=[{"key": "a", "engine": "v2-int4", "weight": 0.5, "control": True},
                                                 {"key": "b", "engine": "v2-int4", "weight": 0.5}])
        calls = [{"experiment": "e2e", "unit_id": f"u{i}", "prompt": PROMPTS[i % len(PROMPTS)],
                  "max_new_tokens": 3 + i % 7} for i in range(48)]
        replies = infer_many(app, headers, calls, concurrency=16)
        assert [s for s, _ in replies] == [200] * 48, [b for s, b in replies if s != 200][:3]
        assert all(1 <= b["completion_tokens"] <= c["max_new_tokens"] for c, (_, b) in zip(calls, replies))
        assert max(b["batch_size"] for _, b in replies) > 1  # requests shared decode steps
        if worker is None:
            expected = ContinuousBatchingScheduler if kind == "continuous" else BatchingScheduler
            assert type(services.inference.dispatcher.host.scheduler("v2-int4")) is expected
        else:
            assert all(b["request_id"] in worker.tail_all() for _, b in replies)
        assert {r.status for r in outcome_rows(services)} == {"ok"}
    finally:
        services.close()
        if worker is not None:
            worker.stop()
