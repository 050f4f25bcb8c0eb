"""Scale-out: two workers on one engine queue share it; losing one mid-run loses no request."""

from __future__ import annotations

import re
import threading
import time

import pytest

from .harness import WorkerProcess, infer_many, outcome_rows
from .test_faults import admin_headers, only_v1
from .test_infer_e2e import make_app

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]
TASK = re.compile(r"abtest\.generate\[([0-9a-f-]{36})\] (received|succeeded)")


def tasks(worker: WorkerProcess, event: str) -> set[str]:
    return {m.group(1) for m in TASK.finditer(worker.tail_all()) if m.group(2) == event}


def test_two_workers_share_a_queue_and_one_dying_loses_nothing(pg_url, redis_url, tiny_registry, tmp_path) -> None:
    env = {"ABTEST_BROKER_URL": redis_url, "ABTEST_ENGINE_REGISTRY": tiny_registry}
    a = WorkerProcess("v1-fp32", env, str(tmp_path / "a.log"), concurrency=4).start()
    b = WorkerProcess("v1-fp32", env, str(tmp_path / "b.log"), concurrency=4).start()
    app = make_app(pg_url, tiny_registry, broker_url=redis_url, infer_timeout_s=15.0)
    headers = admin_headers(app)
    only_v1(app, headers)
    try:
        a.wait_ready()
        b.wait_ready()
        calls = [{"experiment": "e2e", "unit_id": f"s{i}", "prompt": "def f(x):", "max_new_tokens": 8} for i in range(60)]
        replies = infer_many(app, headers, calls, concurrency=16)
        ids = {body["request_id"] for _, body in replies}
        assert [s for s, _ in replies] == [200] * 60
        served_a, served_b = tasks(a, "succeeded"), tasks(b, "succeeded")
        assert served_a and served_b  # both serve
        assert not served_a & served_b and served_a | served_b == ids  # none twice, none missing

        burst = [{"experiment": "e2e", "unit_id": f"k{i}", "prompt": "class A:", "max_new_tokens": 256,
                  "stop": ["<never-stop>"]} for i in range(24)]
        results: list = []
        runner = threading.Thread(target=lambda: results.extend(infer_many(app, headers, burst, concurrency=24)))
        before_a = tasks(a, "received")
        runner.start()
        deadline = time.monotonic() + 30
        while not (tasks(a, "received") - before_a) and time.monotonic() < deadline:
            time.sleep(0.02)
        a.kill9()  # stop one worker mid-run
        runner.join(timeout=120)
        assert not runner.is_alive()
        in_flight_on_a = tasks(a, "received") - tasks(a, "succeeded") - before_a
        burst_ids = {body["request_id"] for _, body in results}
        statuses = {body["request_id"]: status for status, body in results}
        assert len(burst_ids) == 24 and set(statuses.values()) <= {200, 504}
        timed_out = {i for i, s in statuses.items() if s == 504}
        # only what the killed worker held times out (it may be killed before logging a receipt);
        # the survivor never saw any of it, and served everything else
        assert in_flight_on_a & burst_ids <= timed_out
        assert not timed_out & tasks(b, "received")
        assert {i for i, s in statuses.items() if s == 200} <= tasks(b, "succeeded") | tasks(a, "succeeded")
        assert len(timed_out) <= 4  # at most the killed worker's 4 threads' worth
        rows = outcome_rows(app.extensions["abtest"])
        assert len(rows) == 84 and len({r.request_id for r in rows}) == 84  # one row each, none lost
        by_status = {s: sum(r.status == s for r in rows) for s in ("ok", "timeout")}
        assert by_status["ok"] + by_status["timeout"] == 84
        print(f"\nscale-out: 60 shared a={len(served_a)} b={len(served_b)}; burst of 24 with a killed: "
              f"{sum(s == 200 for s in statuses.values())} ok (served by b), {len(timed_out)} timeout (held by a)")
    finally:
        a.stop()
        b.stop()
        app.extensions["abtest"].close()
