"""Assignment benchmark: in-process rate, the split over 100k ids, POST /v1/assign under load,
and the SDK's local evaluation against the same server in the same run.

    python -m benchmarks.assignment [--quick] [--database-url URL] [--workers N]

Prints one JSON object. The HTTP load comes from a second process (threads with keep-alive
clients) against ``abtest serve`` (gunicorn, gthread) on a fresh database. ``local`` is
``Client(..., evaluation="local").assign()`` in one thread of this process, with its exposure
logging on (aggregated, sent to the same server by the client's sender thread): calls per wall
second, calls per CPU second of the calling thread (less sensitive to other load on the box),
then the flush and the exposure counts. ``definitions_memory``: the size of the definitions
document and of the parsed configs (tracemalloc) for 1,000 experiments.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from typing import Any

import httpx
from scipy.stats import chisquare

from abtest.client import Client
from abtest.client import definitions as defs
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


def local(base_url: str, api_key: str, experiment: str, calls: int, units: int) -> dict[str, Any]:
    """``calls`` local assigns in this thread over ``units`` distinct units, exposures on."""
    ids = [f"user-{i}" for i in range(units)]
    with Client(base_url, api_key, evaluation="local", refresh_interval=30.0) as client:
        for unit in ids[:1000]:  # warm-up
            client.assign(experiment, unit)
        wall, cpu = time.perf_counter(), time.thread_time()
        for i in range(calls):
            client.assign(experiment, ids[i % units])
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        flush_start = time.perf_counter()
        flushed = client.flush(timeout=120)
        flush_s = time.perf_counter() - flush_start
        stats, status = client.exposure_stats, client.definitions
    assert stats is not None and status is not None
    return {"calls": calls, "units": units, "assignments_per_s": round(calls / wall),
            "assignments_per_cpu_s": round(calls / cpu), "flushed": flushed, "flush_s": round(flush_s, 3),
            "exposure_items_sent": stats.sent, "exposure_batches": stats.batches, "exposures_dropped": stats.dropped,
            "definitions_version": status.version[:12] if status.version else None}


def definitions_memory(n: int = 1000) -> dict[str, Any]:
    """Payload and parsed size of ``n`` experiments (3 variants, 2 targeting rules, 5 forced
    units, every other one in a layer)."""
    rng = random.Random(1)
    configs = [ExperimentConfig(
        id=i, key=f"experiment-{i:05d}", status="running", salt=f"{rng.getrandbits(64):016x}", phase=1 + i % 3,
        coverage=0.5 + rng.random() / 2, sticky=i % 4 == 0,
        variants=(VariantConfig("control", "v1-fp32", 0.34, is_control=True), VariantConfig("treatment", "v2-int4", 0.33),
                  VariantConfig("treatment-b", "v2-int4", 0.33)),
        targeting=({"attribute": "country", "op": "in", "value": ["US", "CA", "GB"]},
                   {"attribute": "app_version", "op": "semver_gte", "value": "2.1.0"}),
        forced={f"qa-{i}-{j}": "treatment" for j in range(5)},
        layer=f"layer-{i % 10}" if i % 2 else None, layer_start=0.0, layer_end=0.1 if i % 2 else 1.0,
    ) for i in range(n)]
    payload = json.dumps(defs.document(configs), separators=(",", ":")).encode()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _, parsed = defs.parse(json.loads(payload))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(parsed) == n
    return {"experiments": n, "payload_bytes": len(payload), "parsed_bytes": after - before,
            "parsed_bytes_per_1000_experiments": round((after - before) * 1000 / n)}


def over_http(database_url: str, requests: int, concurrency: int, workers: int,
              local_calls: int) -> dict[str, Any]:
    env = {"ABTEST_DATABASE_URL": database_url, "ABTEST_LOG_LEVEL": "WARNING", "ABTEST_PRELOAD_ENGINES": "false"}
    with running_server(env=env, workers=workers) as (base_url, admin_key):
        headers = {"Authorization": f"Bearer {admin_key}"}
        key = f"bench-{int(time.time())}"
        httpx.post(f"{base_url}/v1/experiments", json={"key": key, **DEMO_EXPERIMENT}, headers=headers).raise_for_status()
        httpx.post(f"{base_url}/v1/experiments/{key}/start", headers=headers).raise_for_status()
        result = run_load_process("benchmarks.assignment", {
            "base_url": base_url, "key": admin_key, "experiment": key,
            "requests": requests, "concurrency": concurrency})
        local_result = local(base_url, admin_key, key, local_calls, 20_000)
    http = {"concurrency": concurrency, "server_workers": workers, "database": database_url.split(":")[0], **result}
    return {"http": http, "local": local_result}


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
            **over_http(url, 2000 if ns.quick else 10_000, 16, ns.workers, 200_000 if ns.quick else 1_000_000),
            "definitions_memory": definitions_memory(1000),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
