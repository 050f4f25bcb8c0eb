"""The main job end to end: the demo's traffic through the SDK against real server processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, func, select

from abtest.demo import DemoConfig, drive
from abtest.models import Event, Exposure, RequestLog
from abtest.testing import running_server
from tests.conftest import REDIS_URL, clear_tables
from tests.serving.harness import WorkerProcess


def counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        result = {name: conn.scalar(select(func.count()).select_from(model))
                  for name, model in (("events", Event), ("exposures", Exposure), ("requests", RequestLog))}
    engine.dispose()
    return result


def check_report(report: dict, users: int) -> None:
    assert sum(v["units"] for v in report["variants"]) == users
    names = {m["name"]: m for m in report["metrics"]}
    assert {"conversion", "error_rate", "latency_p99_ms"} <= set(names)
    assert names["conversion"]["role"] == "primary"
    assert report["recommendation"]["action"] in {"ship", "keep running", "keep control", "roll back"}
    assert report["srm"]["p_value"] is not None


@pytest.mark.slow
def test_demo_embedded_from_configuration_to_report(tmp_path, tiny_registry, capsys) -> None:
    db = f"sqlite:///{tmp_path / 'demo.sqlite'}"
    env = {"ABTEST_DATABASE_URL": db, "ABTEST_ENGINE_REGISTRY": tiny_registry}
    cfg = DemoConfig(users=150, effect=0.5, seed=3, max_new_tokens=4, report_path=str(tmp_path / "report.html"))
    with running_server(env=env) as (url, key):
        report = drive(url, key, cfg)
    check_report(report, 150)
    out = capsys.readouterr().out
    assert report["headline"] and report["headline"] in out  # the summary opens with the headline
    assert report["recommendation"]["action"].upper() in out and "conversion (primary" in out and "SRM: p = " in out
    assert "simulated true effect +50.0%" in out
    rows = counts(db)
    assert rows["exposures"] == 150 and rows["requests"] == 150
    conversion = next(m for m in report["metrics"] if m["name"] == "conversion")
    converted = sum(v["estimate"] * v["units"] for v in conversion["variants"].values())
    assert round(converted) == rows["events"] > 0  # every tracked conversion stored and attributed once
    html = (tmp_path / "report.html").read_text()
    assert "<svg" in html and "conversion" in html


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
def test_production_mode_gunicorn_workers_and_demo_target(tmp_path, pg_url, tiny_registry) -> None:
    """PostgreSQL + Redis + `abtest serve` (gunicorn, 2 processes) + one worker per engine."""
    clear_tables(pg_url)
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {"ABTEST_DATABASE_URL": pg_url, "ABTEST_BROKER_URL": REDIS_URL, "ABTEST_ENGINE_REGISTRY": tiny_registry}
    workers = [WorkerProcess(name, env, str(tmp_path / f"{name}.log")).start() for name in ("v1-fp32", "v2-int4")]
    try:
        for w in workers:
            w.wait_ready()
        with running_server(env=env, workers=2) as (url, key):
            out = subprocess.run(
                [sys.executable, "-m", "abtest", "demo", "--target", url, "--users", "120", "--max-new-tokens", "4",
                 "--seed", "11", "-o", str(tmp_path / "prod.html")],
                env={**os.environ, **env, "ABTEST_API_KEY": key}, capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, out.stderr[-3000:]
            experiment = out.stdout.split("experiment '", 1)[1].split("'", 1)[0]
            import httpx

            report = httpx.get(f"{url}/v1/experiments/{experiment}/report",
                               headers={"Authorization": f"Bearer {key}"}, timeout=60).json()
        check_report(report, 120)
        assert report["headline"] in out.stdout and report["recommendation"]["action"].upper() in out.stdout
        assert (tmp_path / "prod.html").read_text().count("<svg") >= 1
        rows = counts(pg_url)
        assert rows["requests"] == 120 and rows["exposures"] == 120
        for w in workers:  # each engine's worker served its share through its own queue
            assert w.tail_all().count("succeeded") > 0
        print("\nproduction mode:", json.dumps({"recommendation": report["recommendation"]["action"],
                                                 "units": {v["variant"]: v["units"] for v in report["variants"]}}))
    finally:
        for w in workers:
            w.stop()
