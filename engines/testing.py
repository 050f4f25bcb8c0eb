"""Tiny random checkpoints for tests (plumbing only): built in seconds, deterministic."""

from __future__ import annotations

import os
from pathlib import Path

from engines.spec import EngineSpec

__all__ = ["TINY", "build_tiny_checkpoints", "TINY_SLIDING_WINDOW"]

TINY_SLIDING_WINDOW = 16


def _tiny_size():
    from engines.demo import DemoSize

    return DemoSize(vocab=512, hidden=128, intermediate=256, layers=4, heads=4, kv_heads=2,
                    train_steps=0, init_std=0.25)


TINY = None  # filled lazily (avoid importing the demo module at import time)


def _save_random(cfg, tokenizer, out: Path, seed: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def build_tiny_checkpoints(root: str | os.PathLike) -> dict[str, EngineSpec]:
    """Tiny dense ``v1-fp32``, tiny hybrid ``v2-fp32`` and its INT4 artifact ``v2-int4`` (g32)
    under ``root`` (reused when present). Returns their specs."""
    import torch
    from transformers import AutoTokenizer

    from engines.demo import _round_up, make_config, stdlib_texts, train_tokenizer
    from engines.quant import is_int4_artifact, quantize_checkpoint

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    size = _tiny_size()
    tok_dir = root / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer(stdlib_texts(max_chars=120_000, per_file=8_000), size.vocab, tok_dir)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    vocab = _round_up(len(tokenizer), 64)
    threads = torch.get_num_threads()
    for name, kind, seed, ctx in (("v1-fp32", "dense", 11, 256), ("v2-fp32", "hybrid", 12, 512)):
        d = root / name
        if not (d / "config.json").is_file():
            cfg = make_config(kind, size, vocab, sliding_window=TINY_SLIDING_WINDOW, context=ctx)
            _save_random(cfg, tokenizer, d, seed)
    q = root / "v2-int4"
    if not is_int4_artifact(q):
        quantize_checkpoint(root / "v2-fp32", q, 32, lm_head_group_size=32)
    torch.set_num_threads(threads)
    # Requests sent together by a test batch together: the idle gap is as long as the wait.
    common = dict(max_batch_size=32, max_wait_ms=20.0, idle_gap_ms=20.0)
    return {
        "v1-fp32": EngineSpec(name="v1-fp32", checkpoint=str(root / "v1-fp32"), precision="fp32",
                              attention="dense", context_window=256, **common),
        "v2-fp32": EngineSpec(name="v2-fp32", checkpoint=str(root / "v2-fp32"), precision="fp32",
                              attention="hybrid", context_window=512, sliding_window=TINY_SLIDING_WINDOW,
                              **common),
        "v2-int4": EngineSpec(name="v2-int4", checkpoint=str(root / "v2-int4"), precision="int4",
                              group_size=32, attention="hybrid", context_window=512,
                              sliding_window=TINY_SLIDING_WINDOW, **common),
    }
