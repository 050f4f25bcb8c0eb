"""The guardrail monitor thread: a round pauses a breaching treatment; the Redis lock admits one process."""

from __future__ import annotations

import random
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import redis

from abtest.models import Exposure
from abtest.reports.rollups import insert_outcomes
from abtest.services.experiments import get_experiment
from abtest.services.monitor import GuardrailMonitor, redis_round_lock
from tests.conftest import REDIS_URL, unavailable


def seed_breach(services, key: str) -> None:  # type: ignore[no-untyped-def]
    """Treatment fails ~40% of its requests, control ~2%: a clear error_rate breach."""
    rng = random.Random(5)
    now = datetime.now(timezone.utc) - timedelta(minutes=5)
    with services.db.transaction() as session:
        exp = get_experiment(session, key)
        rows, exposures = [], []
        for i in range(400):
            variant = "control" if i % 2 == 0 else "treatment"
            unit = f"u{i}"
            exposures.append(Exposure(experiment_id=exp.id, phase=exp.phase, unit_id=unit, variant=variant,
                                      first_seen=now, last_seen=now, count=3))
            for j in range(3):
                failed = rng.random() < (0.4 if variant == "treatment" else 0.02)
                rows.append(dict(request_id=str(uuid.uuid4()), experiment_id=exp.id, phase=exp.phase,
                                 variant=variant, engine="v1-fp32", unit_id=unit, in_experiment=True,
                                 shadow=False, status="error" if failed else "ok",
                                 error_code="engine_error" if failed else None, started_at=now,
                                 finished_at=now, latency_ms=rng.uniform(80, 120)))
        session.add_all(exposures)
        session.flush()
        insert_outcomes(session, rows)


def test_monitor_thread_pauses_a_breaching_treatment(services, make_experiment, client, admin) -> None:
    make_experiment("guarded", start=True)
    seed_breach(services, "guarded")
    invalidated = []
    monitor = GuardrailMonitor(services.db, interval_s=0.2, on_pause=lambda: invalidated.append(1)).start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if client.get("/v1/experiments/guarded", headers=admin).get_json()["treatment_paused"]:
                break
            time.sleep(0.1)
    finally:
        monitor.stop()
    assert client.get("/v1/experiments/guarded", headers=admin).get_json()["treatment_paused"] is True
    assert invalidated == [1]
    actions = [e["action"] for e in client.get("/v1/experiments/guarded/audit", headers=admin).get_json()["entries"]]
    assert actions.count("guardrail_breach") == 1
    body = client.post("/v1/assign", json={"experiment": "guarded", "unit_id": "u1"}, headers=admin).get_json()
    assert body["engine"] == "v1-fp32"  # treatment traffic now goes to control
    resumed = client.patch("/v1/experiments/guarded", json={"treatment_paused": False}, headers=admin).get_json()
    assert resumed["treatment_paused"] is False


def test_redis_round_lock_admits_one_process_per_interval() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).delete("abtest:guardrail-monitor")
    except redis.RedisError as exc:
        unavailable("Redis", exc)
    first, second = redis_round_lock(REDIS_URL, 2.0), redis_round_lock(REDIS_URL, 2.0)
    assert [first(), second(), first()] == [True, False, False]
    time.sleep(1.2)  # the lock lives 90% of the interval (1 s at least)
    assert second() is True


@pytest.mark.parametrize("interval", [0.0])
def test_monitor_is_off_when_interval_is_zero(app, interval) -> None:
    assert app.extensions["abtest"].monitor is None
