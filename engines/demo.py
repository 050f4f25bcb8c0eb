"""Demo checkpoints, built offline and deterministically: a byte-level BPE tokenizer and two
small decoders (V1 dense Llama-style, V2 hybrid sliding/global Qwen2-style) trained briefly on
the Python standard library's own source, plus the INT4 artifact of V2.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["DemoSize", "DEMO", "stdlib_files", "stdlib_texts", "heldout_texts", "train_tokenizer",
           "make_config", "bigram_init", "train_model", "build_demo"]

EOT = "<|endoftext|>"


@dataclass(frozen=True)
class DemoSize:
    vocab: int = 8192
    hidden: int = 1024
    intermediate: int = 2816
    layers: int = 8  # few wide layers: less per-layer overhead per weight byte at decode
    heads: int = 16
    kv_heads: int = 4
    train_steps: int = 36  # V1, after the bigram initialisation (see bigram_init)
    v2_steps: int = 12  # V2, starting from V1's trained weights (see build_demo)
    batch: int = 4
    seq: int = 128
    lr: float = 2e-4  # low: a few steps must refine the bigram start, not wash it out
    warmup: int = 4
    init_std: float = 0.02
    bigram_tokens: int = 3_000_000  # corpus tokens counted for the bigram initialisation
    bigram_rank: int = 512  # rank of its factorisation (<= hidden)
    bigram_prior: float = 50.0  # Dirichlet prior strength towards the unigram distribution


DEMO = DemoSize()


def _stdlib_dir() -> Path:
    return Path(os.__file__).resolve().parent


_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@functools.lru_cache(maxsize=1)
def _stdlib_files() -> tuple[Path, ...]:
    root = _stdlib_dir()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                files.append(Path(dirpath) / fn)
    return tuple(sorted(files))


def stdlib_files() -> list[Path]:
    """The standard library's .py files (no tests, no site-packages), sorted: the same on every
    machine with the same Python minor version."""
    return list(_stdlib_files())


def _is_heldout(p: Path) -> bool:
    return int(hashlib.sha1(p.name.encode()).hexdigest(), 16) % 10 == 0


def _read(p: Path, limit: int | None = None) -> str:
    try:
        t = p.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return t if limit is None else t[:limit]


def stdlib_texts(max_chars: int | None = None, per_file: int | None = None) -> list[str]:
    """Training texts: the stdlib sources that are not held out."""
    out, total = [], 0
    for p in stdlib_files():
        if _is_heldout(p):
            continue
        t = _read(p, per_file)
        if not t:
            continue
        out.append(t)
        total += len(t)
        if max_chars is not None and total >= max_chars:
            break
    return out


def heldout_texts(max_chars: int = 200_000) -> list[str]:
    """Held-out stdlib sources (never trained on), for quality measurements."""
    out, total = [], 0
    for p in stdlib_files():
        if not _is_heldout(p):
            continue
        t = _read(p)
        if len(t) < 2000:
            continue
        out.append(t)
        total += len(t)
        if total >= max_chars:
            break
    return out


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    """Byte-level BPE with one special token (<|endoftext|>: bos, eos and pad), saved as HF files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B", special_tokens=[(EOT, tok.token_to_id(EOT))]
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                 model_max_length=8192)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    return hf


def make_config(kind: str, size: DemoSize, vocab_size: int, *, sliding_window: int = 1024,
                context: int | None = None):
    """V1: Llama-style dense. V2: Qwen2-style, lower half sliding-window layers, upper half global."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size, hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        initializer_range=size.init_std,
    )
    if kind == "dense":
        return LlamaConfig(max_position_embeddings=context or 2048, **common)
    n_sliding = size.layers // 2
    return Qwen2Config(
        max_position_embeddings=context or 8192, use_sliding_window=True, sliding_window=sliding_window,
        max_window_layers=size.layers,
        layer_types=["sliding_attention"] * n_sliding + ["full_attention"] * (size.layers - n_sliding),
        **common,
    )


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _token_stream(tokenizer, texts: list[str], max_tokens: int) -> list[int]:
    eot = tokenizer.convert_tokens_to_ids(EOT)
    ids: list[int] = []
    enc = tokenizer.backend_tokenizer if hasattr(tokenizer, "backend_tokenizer") else None
    for t in texts:
        piece = enc.encode(t, add_special_tokens=False).ids if enc is not None else tokenizer(t, add_special_tokens=False)["input_ids"]
        ids.append(eot)
        ids.extend(piece)
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


def _init_from(model, src: Path) -> None:
    """Copy a trained checkpoint's weights into ``model`` (same shapes; e.g. Llama -> Qwen2,
    whose extra q/k/v biases keep their zero init). Returns None (nothing to report)."""
    from safetensors.torch import load_file

    state = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.endswith(".bias") and not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if bad or unexpected:
        raise ValueError(f"cannot start from {src}: missing {bad[:4]}, unexpected {unexpected[:4]}")


def bigram_init(model, stream, size: DemoSize) -> dict:
    """Start a fresh model as a bigram language model of the corpus, so that a few minutes of
    training on two cores give text-like output (random weights give none, and 36 steps from a
    random start barely move a 100M-parameter model).

    Smoothed log conditionals ``log P(b | a) = log((C[a, b] + k p(b)) / (C[a] + k))`` (bigram
    counts ``C``, unigram ``p``, prior ``k``), centred per row, are factorised at rank ``r``
    (``torch.svd_lowrank``): ``U S V^T``. The input embedding is ``U S^1/2 R``, the (untied)
    output head ``V S^1/2 R`` (``R``: ``r`` rows of a random orthogonal matrix), and every residual branch's output projection starts at zero, so the
    network is exactly that bigram model; one global temperature (the final norm's gain) is
    fitted on 20k corpus positions. Training then refines everything.
    """
    import torch

    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    rank = min(size.bigram_rank, hidden)
    counts = torch.bincount(stream[:-1] * vocab + stream[1:], minlength=vocab * vocab).reshape(vocab, vocab)
    unigram = torch.bincount(stream, minlength=vocab).double() + 1.0
    prior = size.bigram_prior * (unigram / unigram.sum()).float()
    logp = (counts.float() + prior).log() - (counts.sum(1, keepdim=True).float() + size.bigram_prior).log()
    logp -= logp.mean(1, keepdim=True)
    u, sv, v = torch.svd_lowrank(logp, q=rank, niter=2)
    del counts, logp
    with torch.no_grad():
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        # A random rotation R of the hidden space leaves logits (and RMSNorm) unchanged but
        # spreads the dominant singular direction over all features: without it one feature
        # carries most of the scale and spoils group-wise quantization of every layer reading it.
        rot = torch.linalg.qr(torch.randn(hidden, hidden, generator=torch.Generator().manual_seed(0)))[0]
        emb.copy_((u * sv.sqrt()) @ rot[:rank])
        head.copy_((v * sv.sqrt()) @ rot[:rank])
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        x = stream[:20_001]
        h = emb[x[:-1]]
        logits = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + model.config.rms_norm_eps)) @ head.T
        gains = torch.logspace(-3, 1, 41)
        nll = torch.stack([torch.nn.functional.cross_entropy(logits * g, x[1:]) for g in gains])
        model.model.norm.weight.fill_(float(gains[int(nll.argmin())]))
    return {"rank": rank, "tokens": int(stream.numel()), "nll": round(float(nll.min()), 3)}


def train_model(config, tokenizer, texts: list[str], size: DemoSize, seed: int, out_dir: Path,
                desc: str = "train", progress: bool = True, *, steps: int | None = None,
                init_from: Path | None = None) -> dict:
    """Brief, deterministic training (bf16 autocast on CPU), then save as an HF checkpoint.
    ``init_from``: start from that checkpoint's weights instead of a random init."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    random.seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    steps = size.train_steps if steps is None else steps
    need = steps * size.batch * (size.seq + 1) + 1
    t0 = time.perf_counter()
    stream = torch.tensor(_token_stream(tokenizer, texts, max(need * 4, size.bigram_tokens)), dtype=torch.long)
    init = _init_from(model, Path(init_from)) if init_from is not None else bigram_init(model, stream, size)
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(seed)
    # fused: one pass over the 99M parameters per step instead of several (~1 s less per step)
    opt = torch.optim.AdamW(model.parameters(), lr=size.lr, betas=(0.9, 0.95), weight_decay=0.01,
                            fused=True)

    def lr_at(i):
        if i < size.warmup:
            return size.lr * (i + 1) / size.warmup
        frac = (i - size.warmup) / max(1, steps - size.warmup)
        return size.lr * (0.1 + 0.9 * 0.5 * (1 + __import__("math").cos(__import__("math").pi * frac)))

    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, file=sys.stderr, mininterval=1.0)
    for i in bar:
        starts = torch.randint(0, len(stream) - size.seq - 1, (size.batch,), generator=g)
        x = torch.stack([stream[s:s + size.seq + 1] for s in starts.tolist()])
        for pg in opt.param_groups:
            pg["lr"] = lr_at(i)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=x[:, :-1], labels=x[:, :-1].clone())
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    info = {
        "parameters": n_params,
        "steps": steps,
        "tokens": steps * size.batch * size.seq,
        "seconds": round(time.perf_counter() - t0, 1),
        "first_loss": round(losses[0], 3),
        "final_loss": round(sum(losses[-5:]) / min(5, len(losses)), 3),
        "seed": seed,
        "init_from": str(init_from) if init_from is not None else None,
        "bigram_init": init,
    }
    (out_dir / "demo_train.json").write_text(json.dumps(info, indent=2))
    return info


def build_demo(root: str | os.PathLike | None = None, force: bool = False, progress: bool = True,
               size: DemoSize = DEMO, group_size: int = 64, threads: int | None = None) -> dict:
    """Build (or reuse) <root>/tokenizer, v1-fp32, v2-fp32, v2-int4 (``root`` default:
    ``var/checkpoints``; ``threads``: torch CPU threads for the build). Returns a summary."""
    import torch

    from engines.quant import is_int4_artifact, quantize_checkpoint
    from engines.spec import default_checkpoint_root

    root = Path(root) if root is not None else default_checkpoint_root()
    root.mkdir(parents=True, exist_ok=True)
    summary: dict = {"root": str(root)}
    t_all = time.perf_counter()
    if threads:
        torch.set_num_threads(int(threads))
    tok_dir = root / "tokenizer"
    if force:
        for sub in ("tokenizer", "v1-fp32", "v2-fp32", "v2-int4"):
            shutil.rmtree(root / sub, ignore_errors=True)
    texts = stdlib_texts()
    from transformers import AutoTokenizer

    if not (tok_dir / "tokenizer.json").is_file():
        t = time.perf_counter()
        train_tokenizer(stdlib_texts(max_chars=6_000_000), size.vocab, tok_dir)
        summary["tokenizer_seconds"] = round(time.perf_counter() - t, 1)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    vocab = _round_up(len(tokenizer), 64)
    # V1 is trained from scratch; V2 (same shapes, hybrid attention, q/k/v biases) starts from
    # V1's weights and trains further with its own seed: the successor of V1, as in practice, and
    # half the build time of a second training from scratch.
    for name, kind, seed, steps, init in (("v1-fp32", "dense", 1, size.train_steps, None),
                                          ("v2-fp32", "hybrid", 2, size.v2_steps, root / "v1-fp32")):
        d = root / name
        if (d / "config.json").is_file() and not force:
            summary[name] = "cached"
            continue
        shutil.rmtree(d, ignore_errors=True)
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        cfg = make_config(kind, size, vocab)
        summary[name] = train_model(cfg, tokenizer, texts, size, seed, tmp, desc=f"train {name}", progress=progress,
                                    steps=steps, init_from=init)
        tmp.rename(d)
    q = root / "v2-int4"
    if not is_int4_artifact(q) or force:
        shutil.rmtree(q, ignore_errors=True)
        tmp = root / ".v2-int4.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        calib = stdlib_texts(max_chars=1_600_000)  # ~16k calibration tokens (GPTQ Hessians)
        summary["v2-int4"] = quantize_checkpoint(root / "v2-fp32", tmp, group_size, calibration_texts=calib)
        tmp.rename(q)
    else:
        summary["v2-int4"] = "cached"
    summary["seconds"] = round(time.perf_counter() - t_all, 1)
    return summary
