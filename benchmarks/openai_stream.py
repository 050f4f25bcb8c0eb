"""Streaming benchmark of the OpenAI-compatible endpoints, embedded mode, a live ``abtest serve``.

    ABTEST_CHECKPOINT_DIR=var/checkpoints python -m benchmarks.openai_stream [--quick] [--engines a,b]

Prints one JSON object:
  streaming     per engine (called directly by name through POST /v1/chat/completions with
                ``stream: true``) and per concurrency (1 and 16): TTFT p50/p99 (from sending the
                request to the first chunk with text, as the client reads it) and inter-token
                latency p50/p99 (the gaps between successive text chunks), with the counts.
  overhead      the OpenAI layer over /v1/infer: the same request (one experiment, one unit,
                the same prompt, greedy, one token) sent alternately to /v1/infer and to
                /v1/completions, at concurrency 1; p50 of the paired differences, both as the
                client saw them and as the server's ``Server-Timing: app;dur`` says (both are
                differences of two engine calls, so machine noise shows in them); and
                ``layer_us``, the layer's own work timed in this process without an engine:
                parsing and validating a chat request, rendering its messages with the default
                template, and building and encoding the response and a stream's chunks.

The server runs in a child process under gunicorn (as in production), on a temporary SQLite
database; the client is httpx in this process, one thread per concurrent stream.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from abtest.testing import running_server

from ._http import percentiles

PROMPT = [{"role": "user", "content": "Write a function that parses a configuration file."}]


def stream_once(http: httpx.Client, url: str, key: str, engine: str, max_tokens: int) -> tuple[float, list[float]]:
    """(TTFT ms, inter-token gaps ms) of one streamed chat completion."""
    body = {"model": engine, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    times: list[float] = []
    with http.stream("POST", f"{url}/v1/chat/completions", json=body,
                     headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    times.append(time.perf_counter())
    if not times:
        raise RuntimeError(f"engine {engine}: a stream without text")
    return (times[0] - t0) * 1000, [(b - a) * 1000 for a, b in zip(times, times[1:])]


def streaming(url: str, key: str, engine: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
    ttft: list[float] = []
    gaps: list[float] = []
    lock = threading.Lock()
    todo = iter(range(requests))

    def worker() -> None:
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                first, between = stream_once(http, url, key, engine, max_tokens)
                with lock:
                    ttft.append(first)
                    gaps.extend(between)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": len(ttft), "ttft_ms": percentiles(ttft), "inter_token_ms": percentiles(gaps),
            "tokens_between": len(gaps), "wall_s": round(time.perf_counter() - started, 2)}


def overhead(url: str, key: str, rounds: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    infer = {"experiment": "bench", "unit_id": "bench-unit", "prompt": "def parse(path):", "max_new_tokens": 1}
    openai = {"model": "bench", "user": "bench-unit", "prompt": "def parse(path):", "max_tokens": 1, "temperature": 0}
    client_diff, server_diff, a_ms, b_ms = [], [], [], []

    def timed(http: httpx.Client, path: str, body: dict[str, Any]) -> tuple[float, float]:
        t0 = time.perf_counter()
        r = http.post(f"{url}{path}", json=body, headers=headers)
        took = (time.perf_counter() - t0) * 1000
        r.raise_for_status()
        return took, float(r.headers["Server-Timing"].split("dur=")[1])

    with httpx.Client(timeout=60) as http:
        for _ in range(10):  # warm both paths
            timed(http, "/v1/infer", infer)
            timed(http, "/v1/completions", openai)
        for i in range(rounds):
            first, second = (("/v1/infer", infer), ("/v1/completions", openai))[:: 1 if i % 2 == 0 else -1]
            x, y = timed(http, *first), timed(http, *second)
            base, oai = (x, y) if first[0] == "/v1/infer" else (y, x)
            a_ms.append(base[0])
            b_ms.append(oai[0])
            client_diff.append(oai[0] - base[0])
            server_diff.append(oai[1] - base[1])
    return {"rounds": rounds, "infer_ms": percentiles(a_ms), "openai_completions_ms": percentiles(b_ms),
            "added_p50_ms_client": round(sorted(client_diff)[len(client_diff) // 2], 3),
            "added_p50_ms_server": round(sorted(server_diff)[len(server_diff) // 2], 3)}


def layer_us(iterations: int = 5000) -> dict[str, float]:
    """Microseconds per request of the OpenAI layer's own work (no engine, no HTTP)."""
    from abtest.openai.protocol import ChatCompletionRequest, chunk, completion_body, sse
    from abtest.openai.templates import default_render

    body = {"model": "bench", "messages": [{"role": "system", "content": "Be brief."}, *PROMPT], "user": "u",
            "max_tokens": 32, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    result = {"text": "def parse(path):\n    return {}", "prompt_tokens": 20, "completion_tokens": 32,
              "finish_reason": "length"}
    t0 = time.perf_counter()
    for _ in range(iterations):
        ChatCompletionRequest.parse(body).to_params(default_render)
        json.dumps(completion_body(True, "chatcmpl-x", "bench", 0, result))
    request_us = (time.perf_counter() - t0) / iterations * 1e6
    t0 = time.perf_counter()
    for _ in range(iterations):
        sse(chunk(True, "chatcmpl-x", "bench", 0, delta=" parse"))
    return {"request_and_response_us": round(request_us, 2),
            "per_chunk_us": round((time.perf_counter() - t0) / iterations * 1e6, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--engines", default="v1-fp32,v2-fp32,v2-int4")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]
    n1, n16, rounds = (4, 16, 30) if args.quick else (20, 64, 300)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"ABTEST_DATABASE_URL": f"sqlite:///{Path(tmp) / 'bench.sqlite'}", "ABTEST_PRELOAD_ENGINES": "true",
               "ABTEST_GUARDRAIL_INTERVAL_S": "0", "ABTEST_INFER_TIMEOUT_S": "300",
               "ABTEST_CHECKPOINT_DIR": os.environ.get("ABTEST_CHECKPOINT_DIR", "var/checkpoints")}
        with running_server(env=env) as (url, key):
            headers = {"Authorization": f"Bearer {key}"}
            variants = [{"key": "control", "engine": engines[0], "weight": 0.5, "control": True},
                        {"key": "treatment", "engine": engines[-1], "weight": 0.5}]
            exp = {"key": "bench", "name": "bench", "variants": variants,
                   "metrics": [{"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary"}]}
            httpx.post(f"{url}/v1/experiments", json=exp, headers=headers, timeout=30).raise_for_status()
            httpx.post(f"{url}/v1/experiments/bench/start", headers=headers, timeout=30).raise_for_status()
            for engine in engines:  # load and warm each engine
                streaming(url, key, engine, 1, 2, 4)
            out: dict[str, Any] = {"max_tokens": args.max_tokens, "streaming": {}}
            for engine in engines:
                out["streaming"][engine] = {
                    "c1": streaming(url, key, engine, 1, n1, args.max_tokens),
                    "c16": streaming(url, key, engine, 16, n16, args.max_tokens)}
            out["overhead"] = {**overhead(url, key, rounds), "layer_us": layer_us()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
