"""Assignment benchmark: in-process rate, the split over 100k ids, and POST /v1/assign under load.

    python -m benchmarks.assignment [--quick] [--database-url URL] [--workers N]

Prints one JSON object. The HTTP load comes from a second process (threads with keep-alive
clients) against ``abtest serve`` (gunicorn, gthread) on a fresh database.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import httpx
from scipy.stats import chisquare

from abtest.demo import DEMO_EXPERIMENT
from abtest.evaluator import ExperimentConfig, VariantConfig, assign
from abtest.testing import running_server

from ._http import percentiles, run_load_process, timed_threads


def in_process(n: int) -> dict[str, Any]:
    exp = ExperimentConfig(
        id=1, key="bench", status="running", salt="bench-salt", phase=1, coverage=1.0,
        variants=(VariantConfig("control", "v1-fp32", 0.5, is_control=True), VariantConfig("treatment", "v2-int4", 0.5)),
    )
    rng = random.Random(0)
    units = [f"user-{rng.getrandbits(64):016x}" for _ in range(n)]
    start = time.perf_counter()
    counts = Counter(assign(exp, u).variant for u in units)
    elapsed = time.perf_counter() - start
    observed = [counts["control"], counts["treatment"]]
    return {
        "assignments_per_s": round(n / elapsed),
        "units": n,
        "split": {"control": observed[0] / n, "treatment": observed[1] / n},
        "chi2_p_value": round(float(chisquare(observed).pvalue), 4),
    }


def load(args: dict[str, Any]) -> dict[str, Any]:
    """The second process: ``concurrency`` threads, each with its own keep-alive client."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    per_thread = args["requests"] // args["concurrency"]

    def worker(tid: int) -> None:
        nonlocal errors
        mine, bad = [], 0
        with httpx.Client(base_url=args["base_url"], headers={"Authorization": f"Bearer {args['key']}"}) as http:
            for i in range(per_thread):
                t0 = time.perf_counter()
                r = http.post("/v1/assign", json={"experiment": args["experiment"], "unit_id": f"u{tid}-{i}"})
                mine.append((time.perf_counter() - t0) * 1000)
                bad += r.status_code != 200
        with lock:
            latencies.extend(mine)
            errors += bad

    elapsed = timed_threads(worker, range(args["concurrency"]))
    return {"requests": len(latencies), "errors": errors, "requests_per_s": round(len(latencies) / elapsed, 1),
            **percentiles(latencies)}


def over_http(database_url: str, requests: int, concurrency: int, workers: int) -> dict[str, Any]:
    env = {"ABTEST_DATABASE_URL": database_url, "ABTEST_LOG_LEVEL": "WARNING", "ABTEST_PRELOAD_ENGINES": "false"}
    with running_server(env=env, workers=workers) as (base_url, admin_key):
        headers = {"Authorization": f"Bearer {admin_key}"}
        key = f"bench-{int(time.time())}"
        httpx.post(f"{base_url}/v1/experiments", json={"key": key, **DEMO_EXPERIMENT}, headers=headers).raise_for_status()
        httpx.post(f"{base_url}/v1/experiments/{key}/start", headers=headers).raise_for_status()
        result = run_load_process("benchmarks.assignment", {
            "base_url": base_url, "key": admin_key, "experiment": key,
            "requests": requests, "concurrency": concurrency})
    return {"concurrency": concurrency, "server_workers": workers, "database": database_url.split(":")[0], **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.load:
        print(json.dumps(load(json.loads(ns.load))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = ns.database_url or f"sqlite:///{os.path.join(tmp, 'bench.sqlite')}"
        report = {
            "benchmark": "assignment",
            "in_process": in_process(100_000),
            "http": over_http(url, 2000 if ns.quick else 10_000, 16, ns.workers),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
