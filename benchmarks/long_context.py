"""Long context: KV-cache bytes per request and decode speed / TTFT by prompt length, for V1
FP32 (dense, context 2048) and V2 INT4 (hybrid, context 8192). Prints ONE JSON object.

    python -m benchmarks.long_context [--root DIR] [--threads 2] [--kv-only] [--new 32]

``kv``: bytes of the K/V tensors one request's cache allocates (``DecoderRunner.new_cache``,
summed over the allocated tensors) at context 1,024, 2,048 and 8,192, beside what a
full-length cache on every layer would take; V1 cannot hold 8,192 (its context is 2,048).
``lengths``: per prompt length (256, 1,024 and 2,000 for both engines; 4,000 and 8,000 for V2),
TTFT (prefill of the prompt, one request) and decode tokens/s of ``--new`` greedy tokens;
V1's answer for the lengths past its context is its own error, shown as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

CONTEXTS = (1024, 2048, 8192)
LENGTHS = {"v1-fp32": (256, 1024, 2000, 4000, 8000), "v2-int4": (256, 1024, 2000, 4000, 8000)}


def _log(msg: str) -> None:
    print(f"[long-context {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def kv_bytes(engine, contexts=CONTEXTS) -> dict:
    """Allocated KV bytes of one request's cache at each context, ring vs full length."""
    runner = engine.runner
    out = {}
    for n in contexts:
        if n > engine.spec.context_window:
            out[str(n)] = {"error": f"context window is {engine.spec.context_window}"}
            continue
        cache = runner.new_cache(1, n)
        allocated = sum(k.nbytes + v.nbytes for k, v in cache)
        full = 2 * runner.n_layers * n * runner.n_kv * runner.head_dim * cache[0][0].element_size()
        out[str(n)] = {"bytes": allocated, "mib": round(allocated / 2**20, 2),
                       "full_length_bytes": full, "ratio_to_full_length": round(allocated / full, 4)}
        del cache
    return out


def _prompt(engine, n_tokens: int, text: str) -> str:
    ids = engine.encode(text * (1 + (8 * n_tokens) // max(1, len(text))))[: n_tokens]
    return engine.tokenizer.decode(ids[1:]) if len(ids) > 1 else text


def by_length(engine, lengths, new: int, text: str) -> dict:
    from engines import GenerationRequest

    out = {}
    for n in lengths:
        prompt = _prompt(engine, n, text)
        request = GenerationRequest(prompt, max_new_tokens=new)
        result = engine.generate([request])[0]
        if isinstance(result, Exception):
            out[str(n)] = {"error": f"{type(result).__name__}: {result}"}
            continue
        engine.generate([request])  # the first run at a length warms its buffers; report the second
        result = engine.generate([request])[0]
        decoded = result.completion_tokens - 1
        out[str(n)] = {"prompt_tokens": result.prompt_tokens, "ttft_ms": round(result.ttft_ms, 1),
                       "decode_tok_s": round(decoded / (result.decode_ms / 1e3), 1) if result.decode_ms > 0 else None,
                       "completion_tokens": result.completion_tokens}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="checkpoint root (default $ABTEST_CHECKPOINT_DIR or var/checkpoints)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--kv-only", action="store_true", help="only the KV bytes (no timing)")
    ap.add_argument("--new", type=int, default=32, help="greedy tokens decoded per length (default 32)")
    args = ap.parse_args(argv)

    import torch

    from benchmarks.engines import checkpoint_root
    from engines import compute, load_engine
    from engines.demo import build_demo, heldout_texts
    from engines.quant import read_int4_config
    from engines.spec import builtin_specs

    torch.set_num_threads(args.threads)
    root = checkpoint_root(args.root)
    if not all((root / d / "config.json").is_file() for d in ("v1-fp32", "v2-int4")):
        _log(f"demo checkpoints missing under {root}: building them (engines build-demo)")
        build_demo(root, progress=True)
    specs = builtin_specs(root)
    from dataclasses import replace

    specs["v2-int4"] = replace(specs["v2-int4"], group_size=read_int4_config(root / "v2-int4")["group_size"])
    report: dict = {"benchmark": "long_context",
                    "host": {"python": platform.python_version(), "torch": torch.__version__,
                             "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                             "loadavg_start": os.getloadavg()[0]},
                    "engines": {}}
    text = "\n".join(heldout_texts())
    for name in ("v1-fp32", "v2-int4"):
        _log(f"loading {name}")
        engine = load_engine(specs[name], compute.default())  # one thread: one engine at a time
        engine.eos_ids = set()  # fixed-length generations
        entry = {"context_window": engine.spec.context_window,
                 "windows": sorted({w for w in engine.runner.windows if w is not None}) or None,
                 "kv": kv_bytes(engine)}
        if not args.kv_only:
            _log(f"timing {name} at prompt lengths {LENGTHS[name]}")
            entry["lengths"] = by_length(engine, LENGTHS[name], args.new, text)
        report["engines"][name] = entry
        engine.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
