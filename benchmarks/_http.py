"""Shared helpers for benchmarks that drive the API over HTTP from a second process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

__all__ = ["percentiles", "run_load_process", "timed_threads"]


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    if not samples_ms:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    arr = np.asarray(samples_ms)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3), "p99_ms": round(float(np.percentile(arr, 99)), 3)}


def run_load_process(module: str, args: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    """Run ``python -m <module> --load '<json args>'`` and return the JSON it prints."""
    out = subprocess.run([sys.executable, "-m", module, "--load", json.dumps(args)],
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"load process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def timed_threads(target: Callable[[Any], None], args: Iterable[Any]) -> float:
    """Run ``target(arg)`` on one thread per argument, all at once; return the wall seconds."""
    threads = [threading.Thread(target=target, args=(a,)) for a in args]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start
