"""``abtest demo``: the product on embedded defaults, end to end, in one command.

Starts ``abtest serve`` (SQLite, in-process engines) on a free local port with a freshly
bootstrapped admin key, creates the experiment "V2 INT4 vs V1 FP32" through the HTTP API,
starts it, assigns simulated users through ``POST /v1/assign`` and prints the split.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
from scipy.stats import chisquare
from tqdm import tqdm

__all__ = ["run_demo", "DEMO_EXPERIMENT", "running_server"]

DEMO_EXPERIMENT: dict[str, Any] = {
    "name": "V2 INT4 vs V1 FP32",
    "hypothesis": "V2 INT4 serves faster, no less reliably, and converts at least as well as V1 FP32.",
    "owner": "demo",
    "variants": [
        {"key": "v1-fp32", "engine": "v1-fp32", "weight": 0.5, "control": True},
        {"key": "v2-int4", "engine": "v2-int4", "weight": 0.5},
    ],
    "metrics": [
        {"name": "conversion", "event": "conversion", "kind": "binary", "role": "primary"},
        {"name": "error_rate", "role": "guardrail"},
        {"name": "latency_p99_ms", "role": "guardrail"},
    ],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(
    port: int = 0, env: dict[str, str] | None = None, workers: int = 1
) -> Iterator[tuple[str, str]]:
    """Run ``abtest serve`` in a child process; yield (base_url, admin_key)."""
    port = port or _free_port()
    admin_key = "abt_demo_" + secrets.token_urlsafe(24)
    child_env = {**os.environ, **(env or {}), "ABTEST_BOOTSTRAP_ADMIN_KEY": admin_key}
    proc = subprocess.Popen(
        [sys.executable, "-m", "abtest", "serve", "--port", str(port), "--workers", str(workers)],
        env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base_url, proc)
        yield base_url, admin_key
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_healthy(base_url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"the API server exited with {proc.returncode}:\n{err[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the API server did not become healthy within {timeout:.0f}s")


def run_demo(users: int = 3000, seed: int = 7, port: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    with running_server(port) as (base_url, admin_key):
        http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
        key = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{rng.randrange(10**6):06d}"
        created = http.post("/v1/experiments", json={"key": key, **DEMO_EXPERIMENT})
        created.raise_for_status()
        http.post(f"/v1/experiments/{key}/start").raise_for_status()
        print(f"experiment {key!r} ({DEMO_EXPERIMENT['name']}) running at {base_url}")
        split: Counter[str] = Counter()
        for _ in tqdm(range(users), desc="assigning users", unit="user"):
            unit = f"user-{rng.getrandbits(64):016x}"
            reply = http.post("/v1/assign", json={"experiment": key, "unit_id": unit})
            reply.raise_for_status()
            split[reply.json()["variant"]] += 1
    weights = {v["key"]: v["weight"] for v in DEMO_EXPERIMENT["variants"]}
    observed = [split[k] for k in weights]
    p_value = float(chisquare(observed, [users * w for w in weights.values()]).pvalue)
    print(f"\nsplit of {users} simulated users:")
    for k, count in zip(weights, observed):
        print(f"  {k:10s} {count:6d}  {count / users:6.2%}  (target {weights[k]:.0%})")
    print(f"  chi-square p-value {p_value:.3f} ({'sample ratio mismatch' if p_value < 0.001 else 'no sample ratio mismatch'})")
    return dict(split)
