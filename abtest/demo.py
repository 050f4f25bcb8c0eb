"""``abtest demo``: a real experiment from configuration to recommendation, in one command.

1. Builds the demo checkpoints if they are not cached (``abtest engines build-demo``).
2. Starts ``abtest serve`` on embedded defaults (SQLite, engines in-process) on a free local
   port with a freshly bootstrapped admin key (or uses ``--target URL`` with ``--api-key``).
3. Creates the experiment "V2 INT4 vs V1 FP32" (50/50; primary metric ``conversion``;
   guardrails ``error_rate`` and ``latency_p99_ms``) and starts it.
4. Simulated users send prompts from a small built-in set through the Python SDK over HTTP
   and convert with probability

       p = base_rate x (1 + effect if the user got V2 INT4) x (1 if the request succeeded
           else failed_factor)

   so ``effect`` is the true relative effect of V2 on conversion (exactly, when no request
   fails): the demo shows whether the statistics recover it.
5. Prints the statistical summary and writes the HTML report.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from .client import Client
from .testing import running_server

__all__ = ["DemoConfig", "run_demo", "DEMO_EXPERIMENT", "DEMO_PROMPTS", "print_summary"]

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
        {"name": "latency_p99_ms", "role": "guardrail", "margin": 0.10},
        {"name": "latency_ms", "role": "secondary"},
    ],
}

DEMO_PROMPTS = (
    "def read_config(path):",
    "import os\nimport sys\n\n",
    "class LRUCache:\n    def __init__(self, capacity):",
    "    # Return the number of items",
    "Return a list of the lines in the string,",
    "def __repr__(self):\n        return",
    "for key, value in sorted(",
    "The default value is None, which means",
    "    raise ValueError(",
    "if __name__ == '__main__':",
    "with open(filename) as f:",
    "Parse the arguments and",
)


@dataclass(frozen=True)
class DemoConfig:
    users: int = 2000
    effect: float = 0.18  # true relative effect of V2 INT4 on conversion
    base_rate: float = 0.30  # conversion probability of a V1 user with a good response
    failed_factor: float = 0.3  # a failed request multiplies the conversion probability by this
    seed: int = 7
    max_new_tokens: int = 8
    concurrency: int = 32
    target: str | None = None  # run against this server instead of starting one
    api_key: str | None = None  # admin key for --target
    report_path: str = "report.html"


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    if cfg.target is not None:
        if not cfg.api_key:
            raise SystemExit("--target needs an admin key: --api-key or ABTEST_API_KEY")
        return drive(cfg.target.rstrip("/"), cfg.api_key, cfg)
    from engines.demo import build_demo

    started = time.perf_counter()
    build_demo()  # cached: returns at once when the checkpoints exist
    print(f"demo checkpoints ready ({time.perf_counter() - started:.0f}s)")
    # enough server threads for every simulated user in flight, so the engines batch them
    with running_server(threads=max(8, cfg.concurrency * 2)) as (base_url, admin_key):
        return drive(base_url, admin_key, cfg)


def drive(base_url: str, admin_key: str, cfg: DemoConfig) -> dict[str, Any]:
    """Create and start the experiment, send the simulated traffic, fetch and show the report."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    key = f"v2-vs-v1-{time.strftime('%Y%m%d-%H%M%S')}-{cfg.seed}"
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as http:
        http.post("/v1/experiments", json={"key": key, **DEMO_EXPERIMENT}).raise_for_status()
        http.post(f"/v1/experiments/{key}/start").raise_for_status()
        print(f"experiment {key!r} ({DEMO_EXPERIMENT['name']}) running at {base_url}")
        with Client(base_url, admin_key, timeout=120) as client:
            outcomes = _simulate(client, key, cfg)
            client.flush()
        report = http.get(f"/v1/experiments/{key}/report").json()
        html = http.get(f"/v1/experiments/{key}/report", params={"format": "html"})
        html.raise_for_status()
    Path(cfg.report_path).write_text(html.text)
    print_summary(report, outcomes, cfg)
    print(f"\nHTML report written to {Path(cfg.report_path).resolve()}")
    return report


def _simulate(client: Client, key: str, cfg: DemoConfig) -> dict[str, int]:
    counts = {"requests": 0, "failed": 0, "conversions": 0}
    lock = threading.Lock()

    def user(i: int) -> None:
        rng = random.Random(f"{cfg.seed}:{i}")  # each user's randomness is independent of scheduling
        unit = f"user-{cfg.seed}-{i:05d}"
        prompt = DEMO_PROMPTS[rng.randrange(len(DEMO_PROMPTS))]
        ok, variant, request_id = True, None, None
        try:
            result = client.infer(key, unit, prompt, max_new_tokens=cfg.max_new_tokens)
            variant, request_id = result.variant, result.request_id
        except Exception:  # noqa: BLE001 - a failed request is part of the simulation
            ok = False
            variant = client.assign(key, unit).variant
        p = cfg.base_rate * (1 + cfg.effect if variant == "v2-int4" else 1.0) * (1.0 if ok else cfg.failed_factor)
        converted = rng.random() < p
        if converted:
            client.track(unit, "conversion", request_id=request_id, experiment=key)
        with lock:
            counts["requests"] += 1
            counts["failed"] += not ok
            counts["conversions"] += converted

    with ThreadPoolExecutor(cfg.concurrency) as pool, tqdm(total=cfg.users, desc="simulated users", unit="user") as bar:
        for _ in pool.map(user, range(cfg.users)):
            bar.update()
    return counts


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def print_summary(report: dict[str, Any], outcomes: dict[str, int], cfg: DemoConfig) -> None:
    exp = report["experiment"]
    print(f"\n=== {exp['name']} ({exp['key']}), phase {exp['phase']} ===")
    print(f"traffic: {outcomes['requests']} requests ({outcomes['failed']} failed), "
          f"{outcomes['conversions']} conversions; simulated true effect on conversion {cfg.effect:+.1%}")
    for v in report["variants"]:
        print(f"  {v['variant']:8s} units {v['units']:6d}  requests {v['requests']:6d}")
    print(f"\n{'metric':16s} {'role':9s} {'control':>10s} {'treatment':>10s} {'relative effect [95% CI]':>30s} "
          f"{'p-value':>8s} {'signif.':>7s}")
    for m in report["metrics"]:
        for c in m["comparisons"]:
            rel = c.get("relative") or {}
            ci = f"{_pct(rel.get('estimate'))} [{_pct(rel.get('ci_lower'))}, {_pct(rel.get('ci_upper'))}]"
            p = c.get("p_value")
            print(f"{m['name']:16s} {m['role']:9s} {_num(c['control_estimate']):>10s} {_num(c['treatment_estimate']):>10s} "
                  f"{ci:>30s} {('n/a' if p is None else f'{p:.4f}'):>8s} {('yes' if c['significant'] else 'no'):>7s}")
    conversion = next((m for m in report["metrics"] if m["name"] == "conversion"), None)
    rel = (conversion or {"comparisons": [{}]})["comparisons"][0].get("relative") or {}
    if rel.get("ci_lower") is not None:
        inside = rel["ci_lower"] <= cfg.effect <= rel["ci_upper"]
        print(f"\nsimulated true effect {cfg.effect:+.1%} is {'inside' if inside else 'outside'} the 95% CI "
              f"of the measured conversion effect")
    srm = report["srm"]
    print(f"\nSRM: p = {_num(srm.get('p_value'))} -> {'MISMATCH' if srm.get('flagged') else 'ok'}")
    rec = report["recommendation"]
    print(f"recommendation: {rec['action'].upper()}" + (f" ({rec['variant']})" if rec.get("variant") else ""))
    for reason in rec["reasons"]:
        print(f"  - {reason}")
