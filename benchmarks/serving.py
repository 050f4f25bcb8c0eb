"""Serving benchmark: what the API path adds over a direct engine call, and throughput.

    python -m benchmarks.serving [--quick] [--engines demo|tiny] [--no-celery]

Run from the repository root: the demo checkpoints are looked for in $ABTEST_CHECKPOINT_DIR, else
./var/checkpoints (where `abtest engines build-demo` writes them), resolved once at start-up.

Prints one JSON object:
  added_latency   per mode (embedded, celery): p50/p99 of a /v1/infer call minus a direct call
                  to the same engine's batching scheduler, measured interleaved (A, B, A, B...)
                  so machine noise hits both sides alike; both for the whole WSGI call and for
                  the service's own latency_ms (assignment + dispatch + logging).
  throughput      requests/s and completion tokens/s at concurrency 1, 8 and 32, batching on
                  (the engine's max_batch_size) and off (max_batch_size 1), per mode; plus the
                  engine's own batched throughput at concurrency 32 and the ratio of each mode to it.
  scale_out_c32   Celery throughput at concurrency 32 with one and with two workers on one queue.
  v2_vs_v1_celery_c32  V2 INT4's and V1 FP32's served tokens/s through Celery at concurrency 32,
                  alternating rounds after a warm-up pass each, and their ratio (``--compare-only``:
                  just this).

``ABTEST_BENCH_SCHEDULER=continuous`` (or ``static``) serves the engines with that scheduler
instead of their specs' own.

The API runs in this process (Flask's WSGI app, no HTTP parsing on either side of the
comparison); in Celery mode the engine runs in a real `abtest worker` process on local Redis.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ._http import percentiles

PROMPTS = ["def parse_config(path):", "import collections\n\n", "class LRUCache:", "The result of the query is",
           "for index, item in enumerate(", "    return self._"]
REDIS_URL = os.environ.get("ABTEST_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def checkpoint_root() -> Path:
    """Where the demo checkpoints are looked for, absolute and resolved once at start-up:
    ``$ABTEST_CHECKPOINT_DIR``, else ``var/checkpoints`` under the working directory (where
    ``abtest engines build-demo`` puts them when run from the repository root)."""
    from engines.spec import CHECKPOINT_DIR_ENV, default_checkpoint_root

    return default_checkpoint_root(os.environ.get(CHECKPOINT_DIR_ENV))


def demo_present(checkpoints: Path) -> bool:
    """The V2 INT4 demo checkpoint this benchmark serves is built under ``checkpoints``."""
    d = checkpoints / "v2-int4"
    return (d / "config.json").is_file() and (d / "int4_config.json").is_file()


def registry_file(root: Path, engines: str, batching: bool, checkpoints: Path | None = None,
                  engine: str = "v2-int4") -> tuple[str, str]:
    """A registry file under ``root`` with the one engine served; its checkpoint path is
    absolute (the file lives in a temporary folder, which relative paths would point into)."""
    from engines.spec import builtin_specs
    from engines.testing import build_tiny_checkpoints

    if engines == "tiny":
        specs = build_tiny_checkpoints(root / "tiny")
    else:
        specs = builtin_specs(checkpoints or checkpoint_root())
    spec = specs[engine]
    override = os.environ.get("ABTEST_BENCH_SCHEDULER")  # measure the other scheduler (static | continuous)
    if override:
        spec = dataclasses.replace(spec, scheduler=override)
    if not batching:
        spec = dataclasses.replace(spec, max_batch_size=1, max_wait_ms=0.0)
    path = root / f"registry-{engines}-{engine}-{'batch' if batching else 'nobatch'}.json"
    path.write_text(json.dumps({"engines": [spec.to_dict()]}))
    return str(path), spec.name


def direct_scheduler(registry: str, name: str):  # type: ignore[no-untyped-def]
    from engines.runtime import load_engine
    from engines.scheduler import BatchingScheduler
    from engines.spec import load_registry

    return BatchingScheduler(load_engine(load_registry(registry)[name]))


def make_api(db_url: str, registry: str, broker: str | None, engine: str = "v2-int4") -> tuple[Any, dict[str, str]]:
    from abtest.app import create_app
    from abtest.services.keys import create_key

    app = create_app({"database_url": db_url, "engine_registry": registry, "broker_url": broker or "",
                      "log_level": "WARNING", "infer_timeout_s": 120})
    services = app.extensions["abtest"]
    deadline = time.monotonic() + 300
    while not services.health()[0]:  # readiness: the engines load at start-up
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API did not become ready: {services.health()[1]}")
        time.sleep(0.1)
    with services.db.transaction() as session:
        headers = {"Authorization": f"Bearer {create_key(session, 'bench', 'admin')}"}
    client = app.test_client()
    key = f"bench-{time.time_ns()}"
    body = {"key": key, "variants": [{"key": "a", "engine": engine, "weight": 0.5, "control": True},
                                     {"key": "b", "engine": engine, "weight": 0.5}]}
    assert client.post("/v1/experiments", json=body, headers=headers).status_code == 201
    client.post(f"/v1/experiments/{key}/start", headers=headers)
    app.config["BENCH_EXPERIMENT"] = key
    return app, headers


def api_call(app: Any, headers: dict[str, str], i: int, tokens: int) -> int:
    reply = app.test_client().post("/v1/infer", headers=headers, json={
        "experiment": app.config["BENCH_EXPERIMENT"], "unit_id": f"u{i}", "prompt": PROMPTS[i % len(PROMPTS)],
        "max_new_tokens": tokens})
    assert reply.status_code == 200, reply.get_json()
    return int(reply.get_json()["completion_tokens"])


def direct_call(scheduler: Any, i: int, tokens: int) -> int:
    from engines.types import GenerationRequest

    return scheduler.submit(GenerationRequest(prompt=PROMPTS[i % len(PROMPTS)], max_new_tokens=tokens)).result().completion_tokens


def added_latency(app: Any, headers: dict[str, str], scheduler: Any, n: int, tokens: int) -> dict[str, Any]:
    """Paired, interleaved: a direct scheduler call, then the same request through the API.

    ``added_*``: the whole WSGI call (Flask dispatch, JSON, auth included) minus the direct call.
    ``added_service_*``: the server's own ``latency_ms`` (assignment + dispatch + engine wait +
    outcome logging, as the service measures it) minus the direct call.
    """
    api_ms, direct_ms, service_ms = [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        direct_call(scheduler, i, tokens)
        t1 = time.perf_counter()
        reply = app.test_client().post("/v1/infer", headers=headers, json={
            "experiment": app.config["BENCH_EXPERIMENT"], "unit_id": f"u{i}",
            "prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": tokens})
        t2 = time.perf_counter()
        assert reply.status_code == 200, reply.get_json()
        direct_ms.append((t1 - t0) * 1000)
        api_ms.append((t2 - t1) * 1000)
        service_ms.append(reply.get_json()["latency_ms"])
    added = np.asarray(api_ms) - np.asarray(direct_ms)
    service = np.asarray(service_ms) - np.asarray(direct_ms)
    return {"samples": n, "direct": percentiles(direct_ms), "api": percentiles(api_ms),
            "added_p50_ms": round(float(np.percentile(added, 50)), 3),
            "added_p99_ms": round(float(np.percentile(added, 99)), 3),
            "added_service_p50_ms": round(float(np.percentile(service, 50)), 3),
            "added_service_p99_ms": round(float(np.percentile(service, 99)), 3)}


def throughput(call, concurrency: int, n: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(call, range(n)))
    elapsed = time.perf_counter() - start
    return {"requests_per_s": round(n / elapsed, 2), "tokens_per_s": round(tokens / elapsed, 1)}


def run_mode(mode: str, root: Path, engines: str, quick: bool, tokens: int,
             checkpoints: Path | None = None) -> dict[str, Any]:
    from tests.serving.harness import WorkerProcess  # the same worker harness the tests use

    out: dict[str, Any] = {}
    for batching in (True, False):
        registry, name = registry_file(root, engines, batching, checkpoints)
        worker = None
        broker = None
        if mode == "celery":
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()
            broker = REDIS_URL
            worker = WorkerProcess(name, {"ABTEST_BROKER_URL": broker, "ABTEST_ENGINE_REGISTRY": registry},
                                   str(root / f"worker-{batching}.log"), concurrency=64).start()
            worker.wait_ready()
        db = f"sqlite:///{root / f'{mode}-{batching}.sqlite'}"
        app, headers = make_api(db, registry, broker)
        try:
            api_call(app, headers, 0, 2)  # load the engine (embedded) / warm the path
            label = "batching_on" if batching else "batching_off"
            if batching:
                scheduler = direct_scheduler(registry, name)
                out["added_latency"] = added_latency(app, headers, scheduler, 20 if quick else 60, tokens)
                per = 32 if quick else 96
                out["engine_direct_c32"] = throughput(lambda i: direct_call(scheduler, i, tokens), 32, per)
                scheduler.close()
            out[label] = {}
            for c in (1, 8, 32):
                n = max(c * (2 if quick else 4), 8)
                out[label][f"c{c}"] = throughput(lambda i: api_call(app, headers, i, tokens), c, n)
        finally:
            app.extensions["abtest"].close()
            if worker is not None:
                worker.stop()
    out["c32_vs_engine_direct"] = round(out["batching_on"]["c32"]["tokens_per_s"] / out["engine_direct_c32"]["tokens_per_s"], 3)
    return out


def scale_out(root: Path, engines: str, quick: bool, tokens: int, checkpoints: Path | None = None) -> dict[str, Any]:
    """Throughput at concurrency 32 through Celery with one, then two workers on the same queue
    (each worker pinned to one torch thread, so two workers use the two cores)."""
    import redis

    from tests.serving.harness import WorkerProcess

    registry, name = registry_file(root, engines, True, checkpoints)
    data = json.loads(Path(registry).read_text())
    data["engines"][0]["num_threads"] = 1
    Path(registry).write_text(json.dumps(data))
    out: dict[str, Any] = {}
    for count in (1, 2):
        redis.Redis.from_url(REDIS_URL).flushdb()
        env = {"ABTEST_BROKER_URL": REDIS_URL, "ABTEST_ENGINE_REGISTRY": registry}
        workers = [WorkerProcess(name, env, str(root / f"scale-{count}-{i}.log"), concurrency=32).start()
                   for i in range(count)]
        app = None
        try:
            for w in workers:
                w.wait_ready()
            app, headers = make_api(f"sqlite:///{root / f'scale-{count}.sqlite'}", registry, REDIS_URL)
            api_call(app, headers, 0, 2)
            out[f"workers_{count}"] = throughput(lambda i: api_call(app, headers, i, tokens), 32, 64 if quick else 192)
        finally:
            if app is not None:
                app.extensions["abtest"].close()
            for w in workers:
                w.stop()
    out["speedup_2_vs_1"] = round(out["workers_2"]["tokens_per_s"] / out["workers_1"]["tokens_per_s"], 3)
    return out


def v2_vs_v1_celery(root: Path, engines: str, quick: bool, tokens: int, checkpoints: Path | None = None,
                    concurrency: int = 32) -> dict[str, Any]:
    """V2 INT4 and V1 FP32 served the same way: through the API, Celery mode (one ``abtest worker``
    per engine, its spec as registered: batching and scheduler included), ``concurrency`` clients.
    Rounds alternate V1, V2, V1, V2, V1, V2 (the machine is shared); the best round of each is
    compared. Each round starts a fresh worker and API, serves one unmeasured warm-up pass of
    ``2 x concurrency`` requests (allocations, connection pools and caches fill up in the first
    seconds after a start), then the measured ``requests_per_round``."""
    import redis

    from tests.serving.harness import WorkerProcess

    n = concurrency * (3 if quick else 6)
    rounds: dict[str, list[dict[str, float]]] = {"v1-fp32": [], "v2-int4": []}
    for r in range(2 if quick else 3):
        for engine in ("v1-fp32", "v2-int4"):
            registry, name = registry_file(root, engines, True, checkpoints, engine=engine)
            redis.Redis.from_url(REDIS_URL).flushdb()
            env = {"ABTEST_BROKER_URL": REDIS_URL, "ABTEST_ENGINE_REGISTRY": registry}
            worker = WorkerProcess(name, env, str(root / f"compare-{engine}-{r}.log"), concurrency=64).start()
            app = None
            try:
                worker.wait_ready()
                app, headers = make_api(f"sqlite:///{root / f'compare-{engine}-{r}.sqlite'}", registry, REDIS_URL,
                                        engine=engine)
                throughput(lambda i: api_call(app, headers, i, tokens), concurrency, 2 * concurrency)  # warm-up
                rounds[engine].append(throughput(lambda i: api_call(app, headers, i, tokens), concurrency, n))
            finally:
                if app is not None:
                    app.extensions["abtest"].close()
                worker.stop()
    best = {e: max(rs, key=lambda x: x["tokens_per_s"]) for e, rs in rounds.items()}
    return {"concurrency": concurrency, "requests_per_round": n, "warmup_requests": 2 * concurrency,
            "rounds": rounds, "best": best,
            "v2_over_v1_tokens_per_s": round(best["v2-int4"]["tokens_per_s"] / best["v1-fp32"]["tokens_per_s"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--engines", choices=["demo", "tiny"], default=None,
                        help="default: demo checkpoints when built (abtest engines build-demo), else tiny")
    parser.add_argument("--no-celery", action="store_true")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--compare-only", action="store_true",
                        help="only V2 INT4 against V1 FP32 through Celery at concurrency 32")
    ns = parser.parse_args()
    checkpoints = checkpoint_root()
    engines = ns.engines or ("demo" if demo_present(checkpoints) else "tiny")
    if engines == "demo" and not demo_present(checkpoints):
        parser.error(f"the demo checkpoints are not built: {checkpoints / 'v2-int4'} is missing; build them with "
                     f"`abtest engines build-demo --root {checkpoints}` (or set ABTEST_CHECKPOINT_DIR), "
                     f"or use --engines tiny")
    report: dict[str, Any] = {"benchmark": "serving", "engines": engines, "engine": "v2-int4",
                              "max_new_tokens": ns.tokens, "cpus": os.cpu_count()}
    if engines == "demo":
        report["checkpoints"] = str(checkpoints)
    with tempfile.TemporaryDirectory() as tmp:
        if ns.compare_only:
            report["v2_vs_v1_celery_c32"] = v2_vs_v1_celery(Path(tmp), engines, ns.quick, ns.tokens, checkpoints)
            print(json.dumps(report, indent=2))
            return
        for mode in ("embedded",) + (() if ns.no_celery else ("celery",)):
            report[mode] = run_mode(mode, Path(tmp), engines, ns.quick, ns.tokens, checkpoints)
        if not ns.no_celery:
            report["scale_out_c32"] = scale_out(Path(tmp), engines, ns.quick, ns.tokens, checkpoints)
            report["v2_vs_v1_celery_c32"] = v2_vs_v1_celery(Path(tmp), engines, ns.quick, ns.tokens, checkpoints)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
