"""Timeouts that cancel, embedded mode: prints ONE JSON object.

    python -m benchmarks.timeouts [--rounds 3] [--timeout 0.5] [--long-tokens 1000]

On the demo checkpoints (V1 FP32, about 10 tokens/s at batch 1 on the 2-core machine), each round
sends a long generation that cannot finish within ``--timeout`` (its caller gets 504) and then,
at once, a 2-token request on the same engine. If the abandoned generation kept running, the
short request would wait behind it (and time out too); since a timed-out request leaves the batch
at the next decode step, it is served alone. Reports both latencies per round, the short
request's batch size, and the log lines: 504s at WARNING, no ERROR lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time


def _cold_first_request(timeout: float, root: str) -> dict:
    """Engines not preloaded: the first request answers by its deadline (503 engine_starting
    while its engine loads on a thread of its own), not after the load."""
    from abtest.app import create_app
    from abtest.services.keys import create_key

    folder = tempfile.mkdtemp(prefix="abtest-cold-")
    app = create_app({"database_url": f"sqlite:///{folder}/abtest.sqlite", "infer_timeout_s": timeout,
                      "preload_engines": False, "guardrail_interval_s": 0.0, "checkpoint_dir": root})
    services = app.extensions["abtest"]
    with services.db.transaction() as session:
        headers = {"Authorization": f"Bearer {create_key(session, 'bench', 'admin')}"}
    client = app.test_client()
    client.post("/v1/experiments", headers=headers, json={"key": "c", "variants": [
        {"key": "v1", "engine": "v1-fp32", "weight": 1.0, "control": True},
        {"key": "v2", "engine": "v2-int4", "weight": 0.0}]})
    client.post("/v1/experiments/c/start", headers=headers)
    started = time.perf_counter()
    reply = client.post("/v1/infer", headers=headers, json={"experiment": "c", "unit_id": "first", "prompt": "x",
                                                            "max_new_tokens": 2})
    took = time.perf_counter() - started
    services.close()
    return {"status": reply.status_code, "code": (reply.get_json() or {}).get("error", {}).get("code"),
            "seconds": round(took, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=0.5, help="ABTEST_INFER_TIMEOUT_S of the server")
    ap.add_argument("--long-tokens", type=int, default=1000)
    args = ap.parse_args(argv)

    from abtest.app import create_app
    from abtest.services.keys import create_key
    from engines.demo import build_demo
    from benchmarks.serving import checkpoint_root

    root = checkpoint_root()
    build_demo(root)  # cached
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    folder = tempfile.mkdtemp(prefix="abtest-timeouts-")
    app = create_app({"database_url": f"sqlite:///{folder}/abtest.sqlite", "infer_timeout_s": args.timeout,
                      "preload_engines": True, "guardrail_interval_s": 0.0,
                      "checkpoint_dir": str(root)})
    services = app.extensions["abtest"]
    with services.db.transaction() as session:
        headers = {"Authorization": f"Bearer {create_key(session, 'bench', 'admin')}"}
    client = app.test_client()
    while client.get("/healthz").status_code != 200:
        time.sleep(0.1)
    client.post("/v1/experiments", headers=headers, json={"key": "t", "variants": [
        {"key": "v1", "engine": "v1-fp32", "weight": 1.0, "control": True},
        {"key": "v2", "engine": "v2-int4", "weight": 0.0}]})
    client.post("/v1/experiments/t/start", headers=headers)
    rounds = []
    for i in range(args.rounds):
        started = time.perf_counter()
        long = client.post("/v1/infer", headers=headers, json={
            "experiment": "t", "unit_id": f"long-{i}", "prompt": "def f(x):", "max_new_tokens": args.long_tokens})
        long_s = time.perf_counter() - started
        started = time.perf_counter()
        short = client.post("/v1/infer", headers=headers, json={
            "experiment": "t", "unit_id": f"short-{i}", "prompt": "x", "max_new_tokens": 2})
        short_s = time.perf_counter() - started
        rounds.append({"long_status": long.status_code, "long_s": round(long_s, 3), "short_status": short.status_code,
                       "short_s": round(short_s, 3), "short_batch_size": (short.get_json() or {}).get("batch_size")})
    services.close()
    cold = _cold_first_request(args.timeout, str(root))
    logging.getLogger().removeHandler(handler)
    infer = [r for r in records if r.name == "abtest.infer"]
    print(json.dumps({
        "benchmark": "timeouts", "engine": "v1-fp32", "timeout_s": args.timeout, "long_tokens": args.long_tokens,
        "rounds": rounds, "cold_first_request": cold,
        "log": {"timeout_lines_at_warning": sum("504" in r.getMessage() and r.levelno == logging.WARNING for r in infer),
                "error_lines": sum(r.levelno >= logging.ERROR for r in records),
                "invalid_state_errors": sum("InvalidStateError" in r.getMessage() for r in records)},
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
