"""``kill -9`` of the API process under load loses no acknowledged assignment.

A real ``abtest serve`` (gunicorn, 2 worker processes) on PostgreSQL; client threads assign new
units as fast as they can; the whole server is killed with SIGKILL mid-load. Every assignment
answered 200 (enrolled) before the kill must be in the exposures table.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from sqlalchemy import create_engine, text

from abtest.testing import free_port, wait_healthy
from tests.conftest import clear_tables, experiment_payload

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_kill_9_of_the_api_loses_no_acknowledged_exposure(pg_url, tmp_path) -> None:
    clear_tables(pg_url)
    port, admin = free_port(), "abt_kill_" + secrets.token_urlsafe(16)
    env = {**os.environ, "ABTEST_DATABASE_URL": pg_url, "ABTEST_BOOTSTRAP_ADMIN_KEY": admin,
           "ABTEST_PRELOAD_ENGINES": "false", "ABTEST_GUARDRAIL_INTERVAL_S": "0", "ABTEST_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "abtest", "serve", "--port", str(port), "--workers", "2",
                             "--threads", "16"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "serve.log", "wb"), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    acked: list[str] = []
    stop = threading.Event()
    try:
        wait_healthy(base, proc)
        headers = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=base, headers=headers) as http:
            assert http.post("/v1/experiments", json=experiment_payload("durable")).status_code == 201
            assert http.post("/v1/experiments/durable/start").status_code == 200

        def load(worker: int) -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=5) as http:
                for i in range(100_000):
                    if stop.is_set():
                        return
                    unit = f"w{worker}-{i}"
                    try:
                        reply = http.post("/v1/assign", json={"experiment": "durable", "unit_id": unit})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if reply.status_code == 200 and reply.json()["in_experiment"]:
                        acked.append(unit)

        threads = [threading.Thread(target=load, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        os.killpg(proc.pid, signal.SIGKILL)  # master and workers, mid-load
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=10)
    finally:
        stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        stored = set(conn.execute(text("SELECT unit_id FROM exposures")).scalars())
    engine.dispose()
    lost = [u for u in acked if u not in stored]
    assert len(acked) > 100  # the load really ran
    assert lost == []
    print(f"\nkill -9 of the API: {len(acked)} acknowledged assignments, {len(stored)} stored, 0 lost")
