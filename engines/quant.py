"""4-bit group-wise weight-only quantization (gpt-fast style) and the INT4 artifact format.

Scheme, per output row and group of ``group_size`` input columns (asymmetric):

    scale = (max - min) / 15           (bf16)
    zero  = min + 8 * scale            (bf16)
    q     = clamp(round((w - (zero - 8*scale)) / scale), 0, 15)
    w_hat = (q - 8) * scale + zero

This is the layout torch's packed int4 kernels expect (``scales_and_zeros[k_group, n, 0/1]``).
The quantizer improves on plain round-to-nearest with a per-group clipping search that
minimises the (optionally activation-weighted) reconstruction error.

The artifact (a folder) holds the Hugging Face config and tokenizer files of the source
checkpoint plus ``model-int4.safetensors`` with, per quantized Linear ``P``:
``P.qcodes`` (uint8, two raw 4-bit codes per byte, low nibble first, row-major [out, in/2]),
``P.scales`` and ``P.zeros`` (bf16 [out, in/group]) and ``P.bias`` when present; every other
tensor is stored as is (embeddings in bf16). ``int4_config.json`` says how it was made.
Packing into the kernel layout happens at load time, because that layout depends on the device
(and on the CPU's capabilities): the runtime layer is :mod:`engines.int4_layer`; this module is
the offline side (quantize, check, write the artifact) and the reference ``dequantize``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn

__all__ = [
    "ARTIFACT_FILE",
    "ARTIFACT_CONFIG",
    "quantize_weight",
    "gptq_quantize_weight",
    "dequantize",
    "pack_codes",
    "unpack_codes",
    "can_quantize",
    "quantize_checkpoint",
    "is_int4_artifact",
    "read_int4_config",
]

ARTIFACT_FILE = "model-int4.safetensors"
ARTIFACT_CONFIG = "int4_config.json"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Quantize / dequantize (the plain reference path)
# --------------------------------------------------------------------------------------------


def _qparams(wmin: torch.Tensor, wmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scales = ((wmax - wmin).clamp(min=1e-6) / 15).to(torch.bfloat16)
    zeros = (wmin + scales.float() * 8).to(torch.bfloat16)
    return scales, zeros


def _codes(groups: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    s = scales.float()
    lo = zeros.float() - 8 * s
    return ((groups - lo) / s).round_().clamp_(0, 15)


@torch.no_grad()
def quantize_weight(
    w: torch.Tensor,
    group_size: int,
    *,
    act_scale: torch.Tensor | None = None,
    clip_search: bool = True,
    grid: Iterable[float] = (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.79, 0.76, 0.73, 0.70),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize a [out, in] weight. Returns (codes uint8 [out,in], scales bf16, zeros bf16 [out, in/g]).

    ``act_scale`` (optional, [in]) is the mean squared activation of each input channel: the
    clipping search then minimises the output error E[(x·(w - w_hat))^2] per group instead of
    the plain weight error.
    """
    out_f, in_f = w.shape
    if in_f % group_size:
        raise ValueError(f"in_features {in_f} is not a multiple of group size {group_size}")
    g = w.float().reshape(out_f, in_f // group_size, group_size)
    wmax, wmin = g.amax(-1, keepdim=True), g.amin(-1, keepdim=True)
    if act_scale is not None:
        weight = act_scale.float().clamp(min=1e-8).reshape(1, in_f // group_size, group_size)
    else:
        weight = None
    best_err = None
    best = None
    for ratio in grid if clip_search else (1.0,):
        # shrink the range towards its middle-preserving ends (asymmetric clipping)
        s, z = _qparams(wmin * ratio, wmax * ratio)
        q = _codes(g, s, z)
        deq = (q - 8) * s.float() + z.float()
        err = (deq - g).pow_(2)
        if weight is not None:
            err = err * weight
        err = err.sum(-1, keepdim=True)
        if best_err is None:
            best_err, best = err, (q, s, z)
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = tuple(torch.where(better, new, old) for new, old in zip((q, s, z), best))
    q, s, z = best
    return (
        q.to(torch.uint8).reshape(out_f, in_f),
        s.reshape(out_f, -1).contiguous(),
        z.reshape(out_f, -1).contiguous(),
    )


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """Reference path: codes [out,in] (0..15) + bf16 scales/zeros -> fp32 weight [out,in]."""
    out_f, in_f = codes.shape
    q = codes.float().reshape(out_f, in_f // group_size, group_size)
    w = (q - 8) * scales.float().unsqueeze(-1) + zeros.float().unsqueeze(-1)
    return w.reshape(out_f, in_f)


@torch.no_grad()
def gptq_quantize_weight(
    w: torch.Tensor, hessian: torch.Tensor, group_size: int, *, block_size: int = 128, damp: float = 0.01,
    clip_search: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ (Frantar et al. 2022): quantize columns left to right, pushing each column's
    rounding error onto the not-yet-quantized columns through the inverse Hessian of the
    layer's calibration inputs (``hessian`` = E[x x^T], [in, in]). Same output format as
    :func:`quantize_weight`; group parameters are chosen on the error-updated weights."""
    W = w.detach().float().clone()
    out_f, in_f = W.shape
    H = hessian.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += torch.eye(in_f) * (damp * torch.mean(torch.diag(H)))
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    diag_h = torch.diag(hessian).float().clamp(min=1e-8)
    # work on W^T: column i of W is the contiguous row i (the loop below is per column, and a
    # strided column walk was most of the quantizer's time)
    WT = W.t().contiguous()  # [in, out]
    codesT = torch.empty(in_f, out_f, dtype=torch.uint8)
    scales = torch.empty(out_f, in_f // group_size, dtype=torch.bfloat16)
    zeros = torch.empty_like(scales)
    bs = max(group_size, block_size // group_size * group_size)
    for i1 in range(0, in_f, bs):
        i2 = min(i1 + bs, in_f)
        W1 = WT[i1:i2]  # view: updated in place
        Err1 = torch.empty_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        s = z = lo = None
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:
                g = col // group_size
                _, sg, zg = quantize_weight(W1[i:i + group_size].t(), group_size,
                                            act_scale=diag_h[col:col + group_size], clip_search=clip_search)
                scales[:, g], zeros[:, g] = sg[:, 0], zg[:, 0]
                s, z = sg[:, 0].float(), zg[:, 0].float()
                lo = z - 8 * s
            x = W1[i]
            q = ((x - lo) / s).round_().clamp_(0, 15)
            codesT[col] = q.to(torch.uint8)
            err = (x - ((q - 8) * s + z)).div_(Hinv1[i, i])
            if i + 1 < i2 - i1:
                W1[i + 1:].addr_(Hinv1[i, i + 1:], err, alpha=-1)
            Err1[i] = err
        if i2 < in_f:
            WT[i2:].addmm_(Hinv[i1:i2, i2:].t(), Err1, alpha=-1)
    codes = codesT.t().contiguous()
    return codes, scales, zeros


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """[out,in] codes 0..15 -> [out,in/2] uint8, low nibble = even column (storage only)."""
    c = codes.to(torch.uint8)
    return (c[:, 0::2] | (c[:, 1::2] << 4)).contiguous()


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    out_f, half = packed.shape
    c = torch.empty(out_f, half * 2, dtype=torch.uint8, device=packed.device)
    c[:, 0::2] = packed & 0xF
    c[:, 1::2] = packed >> 4
    return c


def can_quantize(linear: nn.Module, group_size: int) -> bool:
    """Whether the kernels accept this Linear's shape (else it stays in floating point)."""
    if not isinstance(linear, nn.Linear):
        return False
    n, k = linear.out_features, linear.in_features
    return k % group_size == 0 and k % 128 == 0 and n % 16 == 0


# --------------------------------------------------------------------------------------------
# Offline quantization of a Hugging Face checkpoint
# --------------------------------------------------------------------------------------------


def is_int4_artifact(path: str | Path) -> bool:
    return (Path(path) / ARTIFACT_CONFIG).is_file()


def read_int4_config(path: str | Path) -> dict:
    return json.loads((Path(path) / ARTIFACT_CONFIG).read_text())


def _quantizable_names(model: nn.Module, group_size: int, include_lm_head: bool) -> list[str]:
    names = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        if name.endswith("lm_head") and not include_lm_head:
            continue
        if can_quantize(mod, group_size):
            names.append(name)
    return names


@torch.no_grad()
def _activation_stats(model: nn.Module, tokenizer, names: list[str], texts: list[str],
                      max_tokens: int = 16384, seq_len: int = 256, full: bool = False) -> dict[str, torch.Tensor]:
    """Per named Linear: E[x^2] per input channel, or with ``full`` the matrix E[x x^T]."""
    stats: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mods = dict(model.named_modules())
    hooks = []

    def make_hook(n):
        def hook(_m, inp, _out):
            x = inp[0].detach().float().reshape(-1, inp[0].shape[-1])
            stats[n] = stats.get(n, 0) + (x.t() @ x if full else x.pow(2).sum(0))
            counts[n] = counts.get(n, 0) + x.shape[0]
        return hook

    for n in names:
        hooks.append(mods[n].register_forward_hook(make_hook(n)))
    try:
        ids: list[int] = []
        for t in texts:
            ids.extend(tokenizer(t)["input_ids"])
            if len(ids) >= max_tokens:
                break
        ids = ids[:max_tokens]
        for i in range(0, len(ids), seq_len):
            chunk = ids[i:i + seq_len]
            if len(chunk) < 8:
                break
            model(input_ids=torch.tensor([chunk]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {n: stats[n] / counts[n] for n in stats}


@torch.no_grad()
def quantize_checkpoint(
    src: str | Path,
    dst: str | Path,
    group_size: int = 64,
    *,
    lm_head_group_size: int | None = 32,
    calibration_texts: list[str] | None = None,
    clip_search: bool = True,
    method: str = "gptq",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Quantize the Linear layers of the HF checkpoint ``src`` and write the artifact ``dst``.

    ``lm_head_group_size``: quantize the output head too, with this (smaller, since it is the
    most sensitive layer) group size; None keeps it in bf16. ``method``: "gptq" (error
    compensation with calibration inputs; needs ``calibration_texts``) or "rtn" (round to
    nearest with an activation-weighted clipping search). Returns the artifact's config dict.
    """
    if method not in ("gptq", "rtn"):
        raise ValueError(f"method must be 'gptq' or 'rtn', got {method!r}")
    if method == "gptq" and not calibration_texts:
        method = "rtn"
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if group_size not in (32, 64, 128):
        raise ValueError(f"group size must be 32, 64 or 128, got {group_size}")
    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    config = AutoConfig.from_pretrained(src, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    lm_gs = lm_head_group_size
    names = _quantizable_names(model, group_size, include_lm_head=False)
    head_name = None
    for name, mod in model.named_modules():
        if name.endswith("lm_head") and lm_gs is not None and can_quantize(mod, lm_gs):
            head_name = name
    all_names = names + ([head_name] if head_name else [])
    act = (_activation_stats(model, tokenizer, all_names, calibration_texts, full=method == "gptq")
           if calibration_texts else {})

    tensors: dict[str, torch.Tensor] = {}
    mods = dict(model.named_modules())
    quantized: dict[str, int] = {}
    # GPTQ's column loop is thousands of small ops per layer: one thread runs it ~10x faster
    # than two on this 2-core box (OpenMP hand-offs cost more than the ops themselves)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i, name in enumerate(all_names):
            mod = mods[name]
            gs = lm_gs if name == head_name else group_size
            if method == "gptq":
                codes, scales, zeros = gptq_quantize_weight(mod.weight.data, act[name], gs, clip_search=clip_search)
            else:
                codes, scales, zeros = quantize_weight(mod.weight.data, gs, act_scale=act.get(name), clip_search=clip_search)
            tensors[f"{name}.qcodes"] = pack_codes(codes)
            tensors[f"{name}.scales"] = scales
            tensors[f"{name}.zeros"] = zeros
            if mod.bias is not None:
                tensors[f"{name}.bias"] = mod.bias.data.float().contiguous()
            quantized[name] = gs
            if progress:
                progress(f"quantized {name} ({i + 1}/{len(all_names)})")
    finally:
        torch.set_num_threads(threads)
    skip_prefixes = tuple(n + "." for n in all_names)
    embed = model.get_input_embeddings()
    embed_name = next(n for n, m in model.named_modules() if m is embed)
    for pname, p in model.state_dict().items():
        if pname.startswith(skip_prefixes):
            continue
        if pname.endswith("lm_head.weight") and head_name is None and getattr(config, "tie_word_embeddings", False):
            continue
        t = p.detach()
        if pname == f"{embed_name}.weight" or pname.endswith("lm_head.weight"):
            t = t.to(torch.bfloat16)
        tensors[pname] = t.contiguous().clone()
    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst / ARTIFACT_FILE), metadata={"format": "abtest-int4", "version": str(FORMAT_VERSION)})
    # HF config + tokenizer files, untied head (the head has its own quantized weights)
    config.tie_word_embeddings = False if head_name is not None else getattr(config, "tie_word_embeddings", False)
    config.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    gen_cfg = src / "generation_config.json"
    if gen_cfg.is_file():
        (dst / "generation_config.json").write_text(gen_cfg.read_text())
    n_fp = sum(p.numel() for p in model.parameters())
    meta = {
        "format": "abtest-int4",
        "version": FORMAT_VERSION,
        "group_size": group_size,
        "lm_head_group_size": lm_gs if head_name else None,
        "scheme": "asymmetric per-group: w = (q - 8) * scale + zero; codes 0..15, bf16 scale/zero",
        "method": method,
        "clip_search": clip_search,
        "activation_aware": bool(act),
        "quantized": quantized,
        "embedding": embed_name,
        "tied_source": bool(getattr(model.config, "tie_word_embeddings", False)),
        "source": str(src),
        "source_parameters": n_fp,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (dst / ARTIFACT_CONFIG).write_text(json.dumps(meta, indent=2))
    return meta


def group_count(in_features: int, group_size: int) -> int:
    return math.ceil(in_features / group_size)
