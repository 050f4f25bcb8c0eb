"""The sliding-window layers' KV cache is a ring of the window's length: memory bounded by the
window, and the same results as a full-length cache (prefill in one piece or in chunks, left
padding, static and continuous batching)."""

from __future__ import annotations

import pytest
import torch

import engines.runtime as runtime
from engines import ContinuousBatchingScheduler, GenerationRequest
from engines.testing import TINY_SLIDING_WINDOW as W


def _prompts(eng, n=5):
    base = "def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, x):\n        self.items.append(x)\n"
    prompts = [base * (1 + i) + f"# {i}" for i in range(n)]
    assert max(len(eng.encode(p)) for p in prompts) > 3 * W  # well past the window
    return prompts


def test_sliding_layers_hold_only_the_window(tiny_engines):
    runner = tiny_engines["v2-int4"].runner
    cache = runner.new_cache(3, 300)
    lengths = [k.shape[2] for k, _ in cache]
    assert lengths == [300 if w is None else W for w in runner.windows]
    assert runner.kv_bytes(300, 3) == sum(k.nbytes + v.nbytes for k, v in cache)
    assert runner.kv_bytes(10) == runner.kv_bytes(10, 1)  # shorter than the window: no ring yet
    dense = tiny_engines["v1-fp32"].runner
    assert [k.shape[2] for k, _ in dense.new_cache(1, 300)] == [300] * dense.n_layers


@pytest.fixture
def full_length_cache(monkeypatch):
    """Make every layer's cache full length (the cache before the ring) for a reference run."""
    def use_full(runner):
        monkeypatch.setattr(runner, "cache_lengths", lambda length: [length] * runner.n_layers)
    return use_full


@pytest.mark.parametrize("chunked", [False, True])
def test_ring_gives_the_full_caches_results(tiny_specs, full_length_cache, monkeypatch, chunked):
    from engines import load_engine

    if chunked:  # prefill in chunks of 16 queries: chunks after the first read the ring
        monkeypatch.setattr(runtime, "_PREFILL_SCORE_BYTES", 1)
    ring, full = load_engine(tiny_specs["v2-fp32"]), load_engine(tiny_specs["v2-fp32"])
    full_length_cache(full.runner)
    prompts = _prompts(ring)
    requests = [GenerationRequest(p, max_new_tokens=12 + 3 * i) for i, p in enumerate(prompts)]
    got, want = ring.generate(requests), full.generate(requests)  # one left-padded batch
    assert [r.token_ids for r in got] == [r.token_ids for r in want]

    ids = torch.tensor([ring.encode(prompts[-1])])
    pos = torch.arange(ids.shape[1])[None]
    with torch.inference_mode():
        a = ring.runner.forward(ids, pos, 0, ring.runner.new_cache(1, ids.shape[1] + 1), None, last_only=False)
        b = full.runner.forward(ids, pos, 0, full.runner.new_cache(1, ids.shape[1] + 1), None, last_only=False)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_continuous_batching_with_rings_matches_static(one_int4_kernel):
    eng = one_int4_kernel
    prompts = _prompts(eng, 6)
    requests = [GenerationRequest(p, max_new_tokens=5 + 4 * i) for i, p in enumerate(prompts)]
    expected = [r.token_ids for r in eng.generate(requests)]
    with ContinuousBatchingScheduler(eng, max_batch_size=4, max_wait_ms=5, idle_gap_ms=5) as s:
        got = [f.result(120).token_ids for f in [s.submit(r) for r in requests]]
    assert got == expected


def test_the_long_context_benchmark_reports_allocated_bytes(tiny_engines):
    from benchmarks.long_context import kv_bytes

    v2, v1 = kv_bytes(tiny_engines["v2-int4"], (8, 200)), kv_bytes(tiny_engines["v1-fp32"], (200, 300))
    runner = tiny_engines["v2-int4"].runner
    per_slot_layer = 2 * runner.n_kv * runner.head_dim * 4  # fp32 K and V of one slot on one layer
    n_global = sum(w is None for w in runner.windows)
    assert v2["8"]["bytes"] == v2["8"]["full_length_bytes"] == 8 * runner.n_layers * per_slot_layer
    assert v2["200"]["bytes"] == (200 * n_global + W * (runner.n_layers - n_global)) * per_slot_layer
    assert v2["200"]["ratio_to_full_length"] < 1 and v1["200"]["ratio_to_full_length"] == 1
    assert v1["300"] == {"error": "context window is 256"}
