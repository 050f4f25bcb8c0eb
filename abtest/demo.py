"""``abtest demo``: a real experiment from configuration to recommendation, in one command.

It asks the product's question: *is V2 INT4 good enough to replace V1 FP32?*

1. Builds the demo checkpoints if they are not cached (``abtest engines build-demo``).
2. Starts ``abtest serve`` on embedded defaults (SQLite, engines in-process) on a free local
   port with a freshly bootstrapped admin key (or uses ``--target URL`` with ``--api-key``).
3. Creates the experiment "V2 INT4 vs V1 FP32" and starts it: a **non-inferiority** decision
   (conversion, the primary metric, may be at most 5 % worse), latency, time to first token and
   cost per request as secondary metrics, ``error_rate`` and ``latency_p99_ms`` guardrails, and
   a quality sample: 20 % of V2 INT4's completions are scored by V2 FP32 (the checkpoint it was
   quantized from), with a guardrail on that top-1 agreement (at least 97 %). ``superiority``
   asks instead whether V2 converts *better* (no margin).
4. Simulated users send prompts from a small built-in set through the Python SDK over HTTP
   and convert with probability

       p = base_rate x (1 + effect if the user got V2 INT4) x (1 if the request succeeded
           else failed_factor)

   so ``effect`` is the true relative effect of V2 on conversion (exactly, when no request
   fails; 0 by default: V2 is exactly as good): the demo shows whether the statistics recover it.
5. Prints the report's headline and summary (the console rendering, ``?format=text``) and
   writes the HTML report.
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
from .config import Settings
from .testing import running_server

__all__ = ["DemoConfig", "run_demo", "DEMO_EXPERIMENT", "DEMO_PROMPTS", "experiment_spec", "print_summary"]

MARGIN = 0.05  # conversion may be at most 5 % worse (relative)
QUALITY_FLOOR = 0.97  # V2 INT4 must pick V2 FP32's greedy token at least 97 % of the time

DEMO_EXPERIMENT: dict[str, Any] = {
    "name": "V2 INT4 vs V1 FP32",
    "hypothesis": "V2 INT4 converts as well as V1 FP32 (at most 5 % worse), serves faster and cheaper, "
                  "and stays close to its full-precision original.",
    "owner": "demo",
    "decision": "non_inferiority",
    "quality_sample": 0.2,
    "variants": [
        {"key": "v1-fp32", "engine": "v1-fp32", "weight": 0.5, "control": True},
        {"key": "v2-int4", "engine": "v2-int4", "weight": 0.5, "quality_reference": "v2-fp32",
         "quality_min_agreement": QUALITY_FLOOR},
    ],
    "metrics": [
        {"name": "conversion", "event": "conversion", "kind": "binary", "role": "primary", "margin": MARGIN},
        {"name": "error_rate", "role": "guardrail"},
        {"name": "latency_p99_ms", "role": "guardrail", "margin": 0.10},
        {"name": "latency_p50_ms", "role": "secondary"},
        {"name": "ttft_ms", "role": "secondary"},
        {"name": "cost_per_request", "role": "secondary"},
    ],
}


def experiment_spec(decision: str = "non_inferiority") -> dict[str, Any]:
    """The demo's experiment under ``decision``: superiority drops the primary metric's margin."""
    if decision == "non_inferiority":
        return DEMO_EXPERIMENT
    metrics = [{k: v for k, v in m.items() if not (m["role"] == "primary" and k == "margin")}
               for m in DEMO_EXPERIMENT["metrics"]]
    return {**DEMO_EXPERIMENT, "decision": decision, "metrics": metrics,
            "hypothesis": "V2 INT4 converts better than V1 FP32, and serves faster and cheaper."}


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
    effect: float = 0.0  # true relative effect of V2 INT4 on conversion (0: exactly as good)
    decision: str = "non_inferiority"  # or "superiority"
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
    build_demo(Settings.load().checkpoint_dir)  # cached: returns at once when the checkpoints exist
    print(f"demo checkpoints ready ({time.perf_counter() - started:.0f}s)")
    # enough server threads for every simulated user in flight, so the engines batch them
    with running_server(threads=max(8, cfg.concurrency * 2)) as (base_url, admin_key):
        return drive(base_url, admin_key, cfg)


def drive(base_url: str, admin_key: str, cfg: DemoConfig) -> dict[str, Any]:
    """Create and start the experiment, send the simulated traffic, fetch and show the report."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    key = f"v2-vs-v1-{time.strftime('%Y%m%d-%H%M%S')}-{cfg.seed}"
    spec = experiment_spec(cfg.decision)
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as http:
        http.post("/v1/experiments", json={"key": key, **spec}).raise_for_status()
        http.post(f"/v1/experiments/{key}/start").raise_for_status()
        print(f"experiment {key!r} ({spec['name']}, {cfg.decision.replace('_', '-')}) running at {base_url}")
        with Client(base_url, admin_key, timeout=120) as client:
            outcomes = _simulate(client, key, cfg)
            client.flush()
        _wait_for_scoring(http, key)
        report = http.get(f"/v1/experiments/{key}/report").json()
        summary = http.get(f"/v1/experiments/{key}/report", params={"format": "text"})
        html = http.get(f"/v1/experiments/{key}/report", params={"format": "html"})
        summary.raise_for_status()
        html.raise_for_status()
    Path(cfg.report_path).write_text(html.text)
    print_summary(report, summary.text, outcomes, cfg)
    print(f"\nHTML report written to {Path(cfg.report_path).resolve()}")
    return report


def _wait_for_scoring(http: httpx.Client, key: str, timeout_s: float = 120.0) -> None:
    """Scoring runs off the request path: wait until the scored count stops growing."""
    deadline, last, still = time.monotonic() + timeout_s, -1, 0
    while time.monotonic() < deadline and still < 3:
        quality = http.get(f"/v1/experiments/{key}/report").json().get("quality") or {}
        done = sum(r["scored"] for r in quality.get("results", ())) + quality.get("skipped", 0) + \
            quality.get("dropped", 0)
        still = still + 1 if done == last else 0
        last = done
        time.sleep(1.0)


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


def print_summary(report: dict[str, Any], summary: str, outcomes: dict[str, int], cfg: DemoConfig) -> None:
    """The traffic, the report's own console summary (headline first), and what the simulation knew."""
    print(f"\ntraffic: {outcomes['requests']} requests ({outcomes['failed']} failed), "
          f"{outcomes['conversions']} conversions; simulated true effect on conversion {cfg.effect:+.1%}\n")
    print(summary.rstrip())
    conversion = next((m for m in report["metrics"] if m["name"] == "conversion"), None)
    seq = ((conversion or {"comparisons": [{}]})["comparisons"][0].get("sequential") or {}).get("relative") or {}
    if seq.get("ci_lower") is not None:
        inside = seq["ci_lower"] <= cfg.effect <= seq["ci_upper"]
        print(f"\nthe simulated true effect {cfg.effect:+.1%} is {'inside' if inside else 'outside'} the "
              f"always-valid interval of the measured conversion effect "
              f"({seq['ci_lower']:+.1%} to {seq['ci_upper']:+.1%})")
