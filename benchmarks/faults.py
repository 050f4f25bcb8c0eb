"""Fault benchmark: data kept and answer times while processes die and dependencies fail.

    python -m benchmarks.faults [--quick]

Production mode on this machine, every part a real process: a private PostgreSQL and a private
Redis (``benchmarks._servers``, so they can be stopped and hung without touching anyone
else's), ``abtest serve`` (gunicorn, 2 worker processes) and one ``abtest worker`` per engine,
on the tiny test checkpoints. Client threads in this process talk HTTP to 127.0.0.1 only, in
loops bounded in count and time. Prints one JSON object:

  kill9         ``kill -9`` of the whole API (master and workers) under mixed load, then a
                restart, ``kills`` times: per table the rows acknowledged to clients (assign
                200 enrolled, infer 200, events 202 accepted) and how many of them are stored.
  database      PostgreSQL stopped, then hung (SIGSTOP): seconds to the first 503 of
                /v1/assign, the slowest answer of assign / infer / events / healthz while it is
                down, and seconds from its return (ready, or SIGCONT) to the first 200.
  broker        Redis stopped, then hung: the same for /v1/infer and /healthz.
  dead_engine   the V2 worker killed with 20 calls waiting for it: answer times of the healthy
                engine, assign, events and healthz meanwhile, and the dead engine's answers.
  overload      200 concurrent /v1/infer from a second process (keep-alive connections opened
                first): share answered 429/503, their latency as the client felt it and as
                the API held it (Server-Timing), the longest client wait against the
                configured timeout; then the same burst of GET /healthz, the
                cheapest call there is, as the floor this machine sets on any answer.
  targets       what the figures are held to.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ._servers import PrivatePostgres, PrivateRedis, free_port

TIMEOUT_S = 5.0  # ABTEST_INFER_TIMEOUT_S of the API under test


def ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(arr, 50)), 1), "p99_ms": round(float(np.percentile(arr, 99)), 1),
            "max_ms": round(float(arr.max()), 1)}


class Stack:
    """The API and its workers as child processes, each in its own process group."""

    def __init__(self, root: Path, quick: bool) -> None:
        from engines.testing import build_tiny_checkpoints

        self.root, self.quick = root, quick
        self.pg, self.redis = PrivatePostgres().start(), PrivateRedis().start()
        specs = build_tiny_checkpoints(root / "tiny")
        self.registry = root / "registry.json"
        self.registry.write_text(json.dumps({"engines": [specs[n].to_dict() for n in ("v1-fp32", "v2-int4")]}))
        self.admin = "abt_faults_" + secrets.token_urlsafe(16)
        self.port = free_port()
        self.env = {**os.environ, "ABTEST_DATABASE_URL": self.pg.url, "ABTEST_BROKER_URL": self.redis.url,
                    "ABTEST_ENGINE_REGISTRY": str(self.registry), "ABTEST_BOOTSTRAP_ADMIN_KEY": self.admin,
                    "ABTEST_INFER_TIMEOUT_S": str(TIMEOUT_S), "ABTEST_GUARDRAIL_INTERVAL_S": "0",
                    "ABTEST_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
        subprocess.run([sys.executable, "-m", "abtest", "db", "upgrade"], env=self.env, check=True,
                       capture_output=True)
        self.api: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.base = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {self.admin}"}

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "abtest", *argv], env=self.env, stdout=subprocess.DEVNULL,
                                stderr=open(self.root / log, "ab"), start_new_session=True)

    def start_api(self) -> None:
        self.api = self._spawn(["serve", "--port", str(self.port), "--workers", "2"], "api.log")
        wait_for(lambda: http_status(self.base + "/healthz") == 200, 120, "the API to become healthy")

    def start_worker(self, engine: str) -> None:
        log = f"worker-{engine}.log"
        self.workers[engine] = self._spawn(["worker", "--engine", engine, "--concurrency", "16"], log)
        wait_for(lambda: " ready." in (self.root / log).read_text(errors="replace"), 180, f"worker {engine}")

    @staticmethod
    def kill9(proc: subprocess.Popen | None) -> None:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def close(self) -> None:
        self.kill9(self.api)
        for proc in self.workers.values():
            self.kill9(proc)
        self.pg.close()
        self.redis.close()

    def experiment(self, key: str, v2_weight: float) -> None:
        body = {"key": key, "variants": [
            {"key": "v1", "engine": "v1-fp32", "weight": 1 - v2_weight, "control": True},
            {"key": "v2", "engine": "v2-int4", "weight": v2_weight}],
            "metrics": [{"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary"}]}
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=10) as http:
            assert http.post("/v1/experiments", json=body).status_code == 201
            assert http.post(f"/v1/experiments/{key}/start").status_code == 200


def http_status(url: str) -> int:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return 0


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def timed(http: httpx.Client, method: str, path: str, body: Any = None) -> tuple[int, float]:
    return timed_reply(http, method, path, body)[:2]


def timed_reply(http: httpx.Client, method: str, path: str, body: Any = None) -> tuple[int, float, float | None]:
    """(status, seconds the client waited, seconds the API held the request per Server-Timing)."""
    started = time.monotonic()
    try:
        reply = http.request(method, path, json=body)
    except httpx.HTTPError:
        return 0, time.monotonic() - started, None
    waited = time.monotonic() - started
    timing = reply.headers.get("Server-Timing", "")
    held = float(timing.split("dur=")[1]) / 1000 if "dur=" in timing else None
    return reply.status_code, waited, held


# --- kill -9 ----------------------------------------------------------------------------

def kill9(stack: Stack, kills: int, seconds: float) -> dict[str, Any]:
    stack.experiment("kill9", 0.5)
    acked: dict[str, set[str]] = {"exposures": set(), "requests": set(), "events": set()}
    lock = threading.Lock()

    def client(worker: int, stop: threading.Event, rnd: int) -> None:
        with httpx.Client(base_url=stack.base, headers=stack.headers, timeout=TIMEOUT_S + 2) as http:
            for i in range(100_000):
                if stop.is_set():
                    return
                unit = f"k{rnd}-{worker}-{i}"
                try:
                    if i % 4 == 3:
                        eid = str(uuid.uuid4())
                        reply = http.post("/v1/events", json={"events": [
                            {"event_id": eid, "unit_id": unit, "name": "purchase"}]})
                        if reply.status_code == 202 and reply.json()["accepted"] == 1:
                            with lock:
                                acked["events"].add(eid)
                    elif i % 4 == 2:
                        reply = http.post("/v1/infer", json={"experiment": "kill9", "unit_id": unit, "prompt": "x",
                                                              "max_new_tokens": 2})
                        if reply.status_code == 200:
                            with lock:
                                acked["requests"].add(reply.json()["request_id"])
                    else:
                        reply = http.post("/v1/assign", json={"experiment": "kill9", "unit_id": unit})
                        if reply.status_code == 200 and reply.json()["in_experiment"]:
                            with lock:
                                acked["exposures"].add(unit)
                except httpx.HTTPError:
                    return  # the server is gone

    for rnd in range(kills):
        stop = threading.Event()
        threads = [threading.Thread(target=client, args=(w, stop, rnd)) for w in range(8)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stack.kill9(stack.api)
        stop.set()
        for t in threads:
            t.join(timeout=TIMEOUT_S + 5)
        stack.start_api()
    import sqlalchemy as sa

    engine = sa.create_engine(stack.pg.url)
    queries = {"exposures": "SELECT unit_id FROM exposures", "requests": "SELECT request_id FROM requests",
               "events": "SELECT event_id FROM events"}
    out: dict[str, Any] = {"kills": kills, "seconds_of_load_each": seconds}
    with engine.connect() as conn:
        for table, sql in queries.items():
            stored = set(conn.execute(sa.text(sql)).scalars())
            out[table] = {"acknowledged": len(acked[table]), "stored": len(acked[table] & stored),
                          "lost": len(acked[table] - stored)}
    engine.dispose()
    return out


# --- dependencies stopped and hung --------------------------------------------------------

def outage(stack: Stack, fail: Callable[[], None], restore: Callable[[], None], probe_path: str,
           probe_body: Any, down_for: float) -> dict[str, Any]:
    """Fail a dependency while polling ``probe_path``; then restore it and time the recovery."""
    calls = {"assign": ("POST", "/v1/assign", {"experiment": "outage", "unit_id": "o1"}),
             "infer": ("POST", "/v1/infer", {"experiment": "outage", "unit_id": "o1", "prompt": "x",
                                             "max_new_tokens": 2}),
             "events": ("POST", "/v1/events", {"events": [{"event_id": str(uuid.uuid4()), "unit_id": "o1",
                                                           "name": "purchase"}]}),
             "healthz": ("GET", "/healthz", None)}
    with httpx.Client(base_url=stack.base, headers=stack.headers, timeout=TIMEOUT_S + 5) as http:
        assert timed(http, "POST", probe_path, probe_body)[0] == 200
        failed_at = time.monotonic()
        fail()
        while True:
            status, _ = timed(http, "POST", probe_path, probe_body)
            if status == 503:
                first_503 = time.monotonic() - failed_at
                break
            if time.monotonic() - failed_at > 30:
                first_503 = None
                break
            time.sleep(0.02)
        slowest: dict[str, float] = {}
        statuses: dict[str, list[int]] = {}
        until = time.monotonic() + down_for
        while time.monotonic() < until:
            for name, (method, path, body) in calls.items():
                status, took = timed(http, method, path, body)
                slowest[name] = max(slowest.get(name, 0.0), took)
                statuses.setdefault(name, []).append(status)
        restored_at = time.monotonic()
        restore()
        ready = time.monotonic()
        while timed(http, "POST", probe_path, probe_body)[0] != 200:
            if time.monotonic() - ready > 60:
                break
            time.sleep(0.02)
        back = time.monotonic() - ready
    return {"first_503_s": None if first_503 is None else round(first_503, 3),
            "slowest_answer_while_down_s": {k: round(v, 3) for k, v in slowest.items()},
            "statuses_while_down": {k: sorted(set(v)) for k, v in statuses.items()},
            "restore_took_s": round(ready - restored_at, 3), "first_200_after_return_s": round(back, 3)}


# --- a dead engine and overload -----------------------------------------------------------

def dead_engine(stack: Stack) -> dict[str, Any]:
    stack.experiment("dead", 0.5)
    with httpx.Client(base_url=stack.base, headers=stack.headers, timeout=10) as http:
        units: dict[str, list[str]] = {}  # which units each engine serves (the salt is the server's)
        for i in range(200):
            engine = http.post("/v1/assign", json={"experiment": "dead", "unit_id": f"d{i}"}).json()["engine"]
            units.setdefault(engine, []).append(f"d{i}")
    stack.kill9(stack.workers.pop("v2-int4"))
    results: dict[str, Any] = {}
    with ThreadPoolExecutor(24) as pool:
        def infer(unit: str) -> tuple[int, float]:
            with httpx.Client(base_url=stack.base, headers=stack.headers, timeout=TIMEOUT_S + 5) as http:
                return timed(http, "POST", "/v1/infer", {"experiment": "dead", "unit_id": unit, "prompt": "x"})

        waiting = [pool.submit(infer, u) for u in units["v2-int4"][:20]]
        time.sleep(0.5)
        with httpx.Client(base_url=stack.base, headers=stack.headers, timeout=TIMEOUT_S + 5) as http:
            for name, (method, path, body) in {
                "healthy_engine_infer": ("POST", "/v1/infer", {"experiment": "dead", "unit_id": units["v1-fp32"][0],
                                                              "prompt": "x", "max_new_tokens": 2}),
                "assign": ("POST", "/v1/assign", {"experiment": "dead", "unit_id": "other"}),
                "events": ("POST", "/v1/events", {"events": [{"event_id": str(uuid.uuid4()), "unit_id": "other",
                                                              "name": "purchase"}]}),
                "healthz": ("GET", "/healthz", None)}.items():
                status, took = timed(http, method, path, body)
                results[name] = {"status": status, "seconds": round(took, 3)}
        dead = [f.result() for f in waiting]
    results["dead_engine_calls"] = {"statuses": {str(s): sum(1 for x, _ in dead if x == s) for s in {x for x, _ in dead}},
                                    "longest_wait_s": round(max(t for _, t in dead), 3), "timeout_s": TIMEOUT_S}
    stack.start_worker("v2-int4")
    return results


def burst(args: dict[str, Any]) -> list[tuple[int, float, float | None]]:
    """The load process: ``n`` keep-alive connections opened first, then one infer each, all at once."""
    n = args["n"]
    clients = [httpx.Client(base_url=args["base"], headers=args["headers"], timeout=TIMEOUT_S + 10) for _ in range(n)]
    for http in clients:
        http.get("/healthz")
    barrier = threading.Barrier(n)

    def one(i: int) -> tuple[int, float, float | None]:
        barrier.wait()
        if args.get("floor"):  # the same burst of the cheapest call there is: what 2 cores allow
            return timed_reply(clients[i], "GET", "/healthz")
        return timed_reply(clients[i], "POST", "/v1/infer", {"experiment": args["experiment"], "unit_id": f"b{i}",
                                                              "prompt": "x", "max_new_tokens": 32})

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def overload(stack: Stack, n: int = 200) -> dict[str, Any]:
    from ._http import run_load_process

    stack.experiment("burst", 0.5)
    args = {"base": stack.base, "headers": stack.headers, "n": n, "experiment": "burst"}
    results = run_load_process("benchmarks.faults", args)["results"]
    floor = run_load_process("benchmarks.faults", {**args, "floor": True})["results"]
    refused = [(t, held) for s, t, held in results if s in (429, 503)]
    return {"concurrent": n, "statuses": {str(s): sum(1 for x, *_ in results if x == s) for s in {x for x, *_ in results}},
            "share_refused": round(len(refused) / n, 3), "refusal_latency": ms([t for t, _ in refused]),
            "refusal_held_by_api": ms([h for _, h in refused if h is not None]),
            "served_latency": ms([t for s, t, _ in results if s == 200]),
            "healthz_burst_latency": ms([t for _, t, _ in floor]),
            "longest_client_wait_s": round(max(t for _, t, _ in results), 3), "timeout_s": TIMEOUT_S}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer kills and shorter outages")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # the overload's client process
    args = parser.parse_args()
    if args.load:
        print(json.dumps({"results": burst(json.loads(args.load))}))
        return
    root = Path(tempfile.mkdtemp(prefix="abtest-faults-"))
    stack = Stack(root, args.quick)
    try:
        for engine in ("v1-fp32", "v2-int4"):
            stack.start_worker(engine)
        stack.start_api()
        data: dict[str, Any] = {"benchmark": "faults", "quick": args.quick, "infer_timeout_s": TIMEOUT_S}
        data["kill9"] = kill9(stack, kills=2 if args.quick else 5, seconds=2.0 if args.quick else 4.0)
        stack.experiment("outage", 0.0)
        down = 2.0 if args.quick else 5.0
        assign = ("/v1/assign", {"experiment": "outage", "unit_id": "o1"})
        infer = ("/v1/infer", {"experiment": "outage", "unit_id": "o1", "prompt": "x", "max_new_tokens": 2})
        data["database"] = {"stopped": outage(stack, stack.pg.stop, stack.pg.start, *assign, down),
                            "hung": outage(stack, stack.pg.pause, stack.pg.resume, *assign, down)}
        data["broker"] = {"stopped": outage(stack, stack.redis.stop, stack.redis.start, *infer, down),
                          "hung": outage(stack, stack.redis.pause, stack.redis.resume, *infer, down)}
        data["dead_engine"] = dead_engine(stack)
        data["overload"] = overload(stack)
        data["targets"] = {"lost_acknowledged_rows": 0, "every_answer_within_s": TIMEOUT_S + 1,
                           "first_503_within_s": 1.0, "recovery_within_s": 1.0}
        print(json.dumps(data))
    finally:
        stack.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
