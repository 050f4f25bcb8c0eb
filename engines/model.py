"""Loading Hugging Face decoders (FP32 or INT4 artifact) and a lean batched forward with a
preallocated static KV cache.

The forward walks the Hugging Face modules of a Llama/Qwen2-family model (embeddings, norms,
q/k/v/o and MLP projections, rotary embedding) but replaces the per-step bookkeeping of
``model.forward`` (cache objects, mask builders, output dataclasses) with a few tensor ops,
which is where a small model spends most of its decode time on CPU.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from engines.kv_ring import ragged_ring_valid, ring_step
from engines.quant import (
    ARTIFACT_FILE,
    BF16Embedding,
    FusedPart,
    Int4Linear,
    is_int4_artifact,
    read_int4_config,
    unpack_codes,
)

log = logging.getLogger(__name__)

__all__ = ["LoadedModel", "load_model", "layer_windows", "DecoderRunner"]

SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def layer_windows(config, attention: str, sliding_window: int | None) -> list[int | None]:
    """Per layer: the sliding window (attend to the last W positions, self included) or None.

    ``attention='dense'`` forces global attention everywhere. ``'hybrid'`` uses the config's
    ``layer_types`` (sliding_attention/full_attention); a config without them gets the lower
    half of its layers sliding. ``sliding_window`` overrides the config's window size.
    """
    n = config.num_hidden_layers
    if attention == "dense":
        return [None] * n
    window = sliding_window or getattr(config, "sliding_window", None) or 1024
    types = getattr(config, "layer_types", None)
    if not types or "sliding_attention" not in types:
        types = ["sliding_attention"] * (n // 2) + ["full_attention"] * (n - n // 2)
    return [window if t == "sliding_attention" else None for t in types]


@dataclass
class LoadedModel:
    model: nn.Module  # the Hugging Face *ForCausalLM (possibly with Int4Linear layers)
    tokenizer: object
    config: object
    int4: dict | None  # the artifact's int4_config.json, or None for a float checkpoint
    dtype: torch.dtype
    device: torch.device

    def weight_bytes(self) -> int:
        """Bytes of all weights in memory (shared storages, e.g. fused views, counted once)."""
        return _storage_bytes(list(self.model.parameters()) + list(self.model.buffers()))

    def linear_weight_bytes(self) -> int:
        """Bytes of the Linear layers' weights (packed int4 + scales/zeros, or float)."""
        ts = []
        for m in self.model.modules():
            if isinstance(m, Int4Linear):
                ts += [m.weight_packed, m.scales_and_zeros]
            elif isinstance(m, nn.Linear):
                ts.append(m.weight)
        return _storage_bytes(ts)


def _storage_bytes(tensors) -> int:
    seen = set()
    total = 0
    for t in tensors:
        if t.device.type == "meta":
            continue
        st = t.untyped_storage()
        key = (st.data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += st.nbytes()
    return total


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int4": torch.float32}


def load_model(checkpoint: str | Path, precision: str = "fp32", device: str = "cpu",
               group_size: int | None = None, attention: str | None = None) -> LoadedModel:
    """Load a HF checkpoint dir (fp32/bf16/fp16) or an INT4 artifact dir (precision 'int4')."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(checkpoint)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint {path} has no config.json (run `engines build-demo`?)")
    dev = torch.device(device)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if getattr(config, "model_type", None) not in SUPPORTED_FAMILIES:
        log.warning("model_type %r is not a tested Llama/Qwen2-family model", getattr(config, "model_type", None))
    if attention == "hybrid" and getattr(config, "model_type", None) == "qwen2" and not getattr(config, "use_sliding_window", False):
        log.warning("qwen2 config without use_sliding_window=True: HF's own forward ignores sliding layers")
    config._attn_implementation = "sdpa"
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if precision == "int4":
        if not is_int4_artifact(path):
            raise ValueError(f"{path} is not an INT4 artifact (make one with `engines quantize`)")
        meta = read_int4_config(path)
        if group_size is not None and group_size != meta["group_size"]:
            raise ValueError(f"spec group_size {group_size} != artifact group size {meta['group_size']}")
        model = _load_int4(path, config, meta, dev)
        dtype = torch.float32
    else:
        if is_int4_artifact(path):
            raise ValueError(f"{path} is an INT4 artifact: use precision 'int4'")
        dtype = _DTYPES[precision]
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype, config=config)
        model.to(dev)
        fuse_float_linears(model)
        meta = None
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, config=config, int4=meta, dtype=dtype, device=dev)


def _load_int4(path: Path, config, meta: dict, dev: torch.device) -> nn.Module:
    """Meta-device model + Int4Linear modules, filled by load_state_dict(assign=True)."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    quantized: dict[str, int] = meta["quantized"]
    state: dict[str, torch.Tensor] = {}
    groups = _fusion_groups(model, quantized)
    grouped = {n for _, members in groups for n in members}
    with safe_open(str(path / ARTIFACT_FILE), framework="pt", device="cpu") as f:
        keys = set(f.keys())

        def raw(n):
            return (unpack_codes(f.get_tensor(f"{n}.qcodes")), f.get_tensor(f"{n}.scales"),
                    f.get_tensor(f"{n}.zeros"), f.get_tensor(f"{n}.bias") if f"{n}.bias" in keys else None)

        def install(target_name, parts, gs, in_f):
            codes, scales, zeros, biases = zip(*parts)
            out_f = sum(c.shape[0] for c in codes)
            kt = Int4Linear.kernel_tensors(torch.cat(codes), torch.cat(scales), torch.cat(zeros), dev)
            has_bias = any(b is not None for b in biases)
            mod = Int4Linear(in_f, out_f, has_bias, gs, device="meta", packed_shape=tuple(kt["weight_packed"].shape))
            state[f"{target_name}.weight_packed"] = kt["weight_packed"]
            state[f"{target_name}.scales_and_zeros"] = kt["scales_and_zeros"]
            if has_bias:
                bs = [b.float() if b is not None else torch.zeros(c.shape[0]) for b, c in zip(biases, codes)]
                state[f"{target_name}.bias"] = torch.cat(bs).to(dev)
            return mod

        # q/k/v and gate/up of a layer become one kernel call each (raw codes concatenated)
        for fused_name, members in groups:
            lin0 = model.get_submodule(members[0])
            parts = [raw(n) for n in members]
            fused = install(fused_name, parts, quantized[members[0]], lin0.in_features)
            _set_module(model, fused_name, fused)
            start = 0
            for n, p in zip(members, parts):
                _set_module(model, n, FusedPart(fused, start, start + p[0].shape[0]))
                start += p[0].shape[0]
        for name, gs in quantized.items():
            if name in grouped:
                continue
            lin = model.get_submodule(name)
            _set_module(model, name, install(name, [raw(name)], gs, lin.in_features))
        qkeys = {f"{n}.{s}" for n in quantized for s in ("qcodes", "scales", "zeros", "bias")}
        embed_name = meta.get("embedding")
        for k in keys - qkeys:
            t = f.get_tensor(k)
            if embed_name and k == f"{embed_name}.weight" and t.dtype == torch.bfloat16:
                old = model.get_submodule(embed_name)
                _set_module(model, embed_name, BF16Embedding(old.num_embeddings, old.embedding_dim,
                                                             padding_idx=old.padding_idx, device="meta",
                                                             dtype=torch.bfloat16))
            elif t.dtype == torch.bfloat16:
                t = t.float()  # e.g. an unquantized lm_head
            state[k] = t.to(dev)
    # tied head that was not quantized: share the embedding table
    if "lm_head.weight" not in state and not any(n.endswith("lm_head") for n in quantized):
        emb = state[f"{embed_name}.weight"]
        state["lm_head.weight"] = emb.float() if emb.dtype != torch.float32 else emb
    model.load_state_dict(state, strict=True, assign=True)
    # non-persistent buffers (rotary inv_freq) were created on meta: rebuild them
    _rebuild_meta_buffers(model, config, dev)
    return model


_FUSE = (("self_attn", ("q_proj", "k_proj", "v_proj"), "qkv_fused"), ("mlp", ("gate_proj", "up_proj"), "gate_up_fused"))


def _fusion_groups(model: nn.Module, quantized: dict[str, int]) -> list[tuple[str, list[str]]]:
    """(fused module name, member names) for each layer's q/k/v and gate/up that are all
    quantized with the same group size."""
    out = []
    for lname, layer in model.named_modules():
        for sub, members, fused in _FUSE:
            if not hasattr(layer, sub) or not lname:
                continue
            names = [f"{lname}.{sub}.{m}" for m in members]
            if all(n in quantized for n in names) and len({quantized[n] for n in names}) == 1:
                out.append((f"{lname}.{sub}.{fused}", names))
    return out


def fuse_float_linears(model: nn.Module) -> None:
    """Float checkpoints: put q/k/v (and gate/up) weights in one tensor, the original Linear
    modules keeping views into it (one GEMM per group, no extra memory)."""
    for lname, layer in list(model.named_modules()):
        for sub, members, fused_name in _FUSE:
            parent = getattr(layer, sub, None) if lname else None
            if parent is None or hasattr(parent, fused_name):
                continue
            mods = [getattr(parent, m, None) for m in members]
            if not all(type(m) is nn.Linear for m in mods):
                continue
            w = torch.cat([m.weight.data for m in mods])
            has_bias = any(m.bias is not None for m in mods)
            fused = nn.Linear(mods[0].in_features, w.shape[0], bias=has_bias, device="meta")
            fused.weight = nn.Parameter(w, requires_grad=False)
            if has_bias:
                b = torch.cat([m.bias.data if m.bias is not None else torch.zeros(m.out_features, dtype=w.dtype, device=w.device)
                               for m in mods])
                fused.bias = nn.Parameter(b, requires_grad=False)
            start = 0
            for m in mods:
                end = start + m.out_features
                m.weight = nn.Parameter(fused.weight.data[start:end], requires_grad=False)
                if m.bias is not None:
                    m.bias = nn.Parameter(fused.bias.data[start:end], requires_grad=False)
                start = end
            setattr(parent, fused_name, fused)


def _rebuild_meta_buffers(model: nn.Module, config, dev: torch.device) -> None:
    for name, mod in list(model.named_modules()):
        if any(b.device.type == "meta" for b in mod.buffers(recurse=False)):
            if "rotary" in type(mod).__name__.lower():
                with torch.device(dev):
                    _set_module(model, name, type(mod)(config=config))
            else:
                raise RuntimeError(f"module {name} ({type(mod).__name__}) still has meta buffers after load")
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"tensors left on the meta device after load: {left[:5]}")


# --------------------------------------------------------------------------------------------
# Lean forward
# --------------------------------------------------------------------------------------------


_PLAIN_RMSNORMS = {"LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm"}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` in three ops: rotate_half(x) is roll(x, D/2) with the
    sign of its first half folded into ``sin_signed`` (= cat(-sin[:D/2], sin[D/2:]))."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin_signed)


def _linear(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A projection without nn.Module.__call__'s bookkeeping (no hooks are used here).

    An INT4 layer takes bf16 activations and returns bf16 (plus an fp32 bias, if any): the
    callers keep that output where the next op accepts it (MLP interior, residual add, which
    promotes) instead of converting both ways around every kernel call."""
    if type(mod) is nn.Linear:
        return F.linear(x if x.dtype == mod.weight.dtype else x.to(mod.weight.dtype), mod.weight, mod.bias)
    if type(mod) is Int4Linear:
        return mod.forward(x if x.dtype == torch.bfloat16 else x.to(torch.bfloat16))
    return mod(x)


class DecoderRunner:
    """Batched forward over a HF Llama/Qwen2-family decoder with a static KV cache.

    Cache layout: per layer K and V tensors [B, n_kv_heads, T, head_dim]; slot ``s`` of row
    ``b`` holds that row's token at slot s (prompts are left-padded so all rows share slot
    indices; padded slots are masked out of attention).

    A sliding-window layer (window W) reads only its last W slots, so its cache holds at most W
    (:meth:`new_cache`): a ring, see :mod:`engines.kv_ring`.
    """

    def __init__(self, loaded: LoadedModel, context_window: int, attention: str = "dense",
                 sliding_window: int | None = None):
        m = loaded.model
        cfg = loaded.config
        self.model = m
        self.config = cfg
        self.device = loaded.device
        self.dtype = loaded.dtype
        base = m.model
        self.embed = base.embed_tokens
        self.layers = list(base.layers)
        self.norm = base.norm
        self.lm_head = m.lm_head
        self.n_layers = len(self.layers)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.windows = layer_windows(cfg, attention, sliding_window)
        self.context_window = context_window
        self.embed_scale = None
        attn0 = self.layers[0].self_attn
        self.has_qk_norm = hasattr(attn0, "q_norm")
        self.scaling = getattr(attn0, "scaling", self.head_dim ** -0.5)
        self.silu = getattr(cfg, "hidden_act", "silu") == "silu"
        # rotary table for every position of the context window
        rot = base.rotary_emb
        pos = torch.arange(context_window, device=self.device)[None]
        probe = torch.zeros(1, device=self.device, dtype=torch.float32)
        with torch.inference_mode():
            cos, sin = rot(probe, pos)
        self.cos = cos[0].to(self.dtype).contiguous()  # [T, head_dim]
        self.sin = sin[0].to(self.dtype).contiguous()
        half = self.head_dim // 2
        self.sin_signed = torch.cat((-self.sin[:, :half], self.sin[:, half:]), -1).contiguous()

    @staticmethod
    def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        eps = getattr(norm, "variance_epsilon", None)
        if eps is None or type(norm).__name__ not in _PLAIN_RMSNORMS:
            return norm(x)
        # HF's formula, inline (torch's fused rms_norm op was ~3x slower for one token on CPU)
        if x.dtype == torch.float32:
            return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
        xf = x.float()
        return norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def cache_lengths(self, length: int) -> list[int]:
        """Slots per layer of a cache for ``length`` slots: all of them on a global layer, at
        most the window on a sliding one (a ring)."""
        return [length if W is None else min(length, W) for W in self.windows]

    def kv_bytes(self, length: int, batch: int = 1) -> int:
        """Bytes of the K and V tensors :meth:`new_cache` allocates for ``batch`` rows of ``length``."""
        per_slot = 2 * batch * self.n_kv * self.head_dim * torch.empty((), dtype=self.dtype).element_size()
        return per_slot * sum(self.cache_lengths(length))

    def new_cache(self, batch: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        caches = []
        for n in self.cache_lengths(length):
            shape = (batch, self.n_kv, n, self.head_dim)
            caches.append((torch.empty(shape, dtype=self.dtype, device=self.device),
                           torch.empty(shape, dtype=self.dtype, device=self.device)))
        return caches

    @staticmethod
    def select_rows(cache, rows: torch.Tensor):
        return [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache]

    def _qkv(self, attn: nn.Module, x: torch.Tensor, q: int, cos: torch.Tensor, sin: torch.Tensor):
        """Queries, keys, values [B, heads, q, D] with rotary applied (fused projection if any)."""
        B, H, Hkv, D = x.shape[0], self.n_heads, self.n_kv, self.head_dim
        qkv_mod = getattr(attn, "qkv_fused", None)
        if qkv_mod is not None and not self.has_qk_norm:
            qkv = _linear(qkv_mod, x)
            if qkv.dtype != self.dtype:
                qkv = qkv.to(self.dtype)
            qkv = qkv.view(B, q, H + 2 * Hkv, D).transpose(1, 2)
            qk = _rope(qkv[:, : H + Hkv], cos, sin)
            return qk[:, :H], qk[:, H:], qkv[:, H + Hkv:]
        qs = attn.q_proj(x).view(B, q, H, D).transpose(1, 2)
        ks = attn.k_proj(x).view(B, q, Hkv, D).transpose(1, 2)
        vs = attn.v_proj(x).view(B, q, Hkv, D).transpose(1, 2)
        if self.has_qk_norm:
            qs = attn.q_norm(qs)
            ks = attn.k_norm(ks)
        return _rope(qs, cos, sin), _rope(ks, cos, sin), vs

    def _mlp(self, mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
        gu_mod = getattr(mlp, "gate_up_fused", None)
        if gu_mod is not None and self.silu:
            gate, up = _linear(gu_mod, x).chunk(2, dim=-1)
            # silu and the product in fp32 whatever the layer's output dtype (same numbers as HF)
            return _linear(mlp.down_proj, F.silu(gate.float()).mul_(up))
        return mlp(x)

    def _block(self, layer: nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend) -> torch.Tensor:
        """One decoder layer, pre-norm: h + attention, then h + MLP. ``attend(qs, ks, vs)`` stores
        the new keys and values [B, heads, q, D] in the layer's cache and returns the attention
        output [B, heads, q, D]: the one part that differs between the callers."""
        B, q = h.shape[0], h.shape[1]
        attn = layer.self_attn
        qs, ks, vs = self._qkv(attn, self._norm(layer.input_layernorm, h), q, cos, sin)
        o = attend(qs, ks, vs).transpose(1, 2).reshape(B, q, self.n_heads * self.head_dim)
        h = h + _linear(attn.o_proj, o)
        return h + self._mlp(layer.mlp, self._norm(layer.post_attention_layernorm, h))

    def _attention(self, qs, keys, values, mask) -> torch.Tensor:
        """SDPA with grouped KV heads; ``mask`` a boolean mask, None, or "causal"."""
        return F.scaled_dot_product_attention(
            qs, keys, values, attn_mask=None if isinstance(mask, str) else mask, is_causal=isinstance(mask, str),
            scale=self.scaling, enable_gqa=self.n_kv != self.n_heads)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return h if h.dtype == self.dtype else h.to(self.dtype)

    def forward(
        self,
        ids: torch.Tensor,  # [B, q]
        positions: torch.Tensor,  # [B, q] rotary positions
        start: int,  # cache slot of ids[:, 0]
        cache,
        key_valid: torch.Tensor | None,  # [B, T] bool, False for padding slots; None = all valid
        *,
        last_only: bool = True,
        return_hidden: bool = False,
    ):
        """Prefill (a chunk of q tokens) or a decode step (q = 1) of rows that share slots."""
        B, q = ids.shape
        end = start + q
        h = self._embed(ids)
        cos = self.cos[positions].unsqueeze(1)  # [B,1,q,D]
        sin = self.sin_signed[positions].unsqueeze(1)
        masks: dict = {}
        hidden = []

        def attend(li: int, qs, ks, vs):
            W = self.windows[li]
            kc, vc = cache[li]
            if W is not None and kc.shape[2] < end:  # a ring that no longer holds every slot
                return self._attention(qs, *ring_step(kc, vc, ks, vs, start, end, key_valid, W, masks, self._mask))
            kstart = 0 if W is None or q > 1 else max(0, end - W)
            if W not in masks:
                if q > 1 and start == 0 and key_valid is None and (W is None or W >= end):
                    masks[W] = "causal"
                else:
                    masks[W] = self._mask(B, q, start, end, kstart, key_valid, W)
            kc[:, :, start:end] = ks
            vc[:, :, start:end] = vs
            return self._attention(qs, kc[:, :, kstart:end], vc[:, :, kstart:end], masks[W])

        for li, layer in enumerate(self.layers):
            h = self._block(layer, h, cos, sin, functools.partial(attend, li))
            if return_hidden:
                hidden.append(h)
        if last_only:
            h = h[:, -1:]
        logits = self.lm_head(self._norm(self.norm, h)).float()
        if return_hidden:
            return logits, hidden
        return logits

    def decode_ragged(self, tok: torch.Tensor, slots: torch.Tensor, end: int, cache) -> torch.Tensor:
        """One decode step where row b's token sits at its own slot ``slots[b]`` (= its position;
        rows start at slot 0, no padding): continuous batching, where rows join and leave at
        any step. ``end`` = max(slots) + 1. Returns logits [B, vocab]."""
        B = tok.shape[0]
        h = self._embed(tok[:, None])
        cos = self.cos[slots][:, None, None, :]  # [B,1,1,D]
        sin = self.sin_signed[slots][:, None, None, :]
        kpos = torch.arange(end, device=self.device)[None, :]
        causal = kpos <= slots[:, None]  # [B, end]
        masks: dict = {}
        rows = torch.arange(B, device=self.device)

        def attend(li: int, qs, ks, vs):
            W = self.windows[li]
            kc, vc = cache[li]
            ring = W is not None and kc.shape[2] < end
            key = ("ring", W) if ring else W
            if key not in masks:
                m = ragged_ring_valid(slots, kc.shape[2]) if ring else (
                    causal if W is None else causal & (kpos > (slots[:, None] - W)))
                masks[key] = m[:, None, None, :]
            at = slots % kc.shape[2] if ring else slots
            kc[rows, :, at] = ks[:, :, 0]
            vc[rows, :, at] = vs[:, :, 0]
            n = kc.shape[2] if ring else end
            return self._attention(qs, kc[:, :, :n], vc[:, :, :n], masks[key])

        for li, layer in enumerate(self.layers):
            h = self._block(layer, h, cos, sin, functools.partial(attend, li))
        return self.lm_head(self._norm(self.norm, h)).float()[:, -1]

    def _mask(self, B, q, start, end, kstart, key_valid, W):
        """Boolean [B,1,q,S] mask (True = attend), or None when nothing needs masking."""
        causal_needed = q > 1
        window_needed = W is not None and (end - W) > kstart
        if key_valid is None and not causal_needed and not window_needed:
            return None
        S = end - kstart
        kpos = torch.arange(kstart, end, device=self.device)
        qpos = torch.arange(start, end, device=self.device)
        allowed = kpos[None, :] <= qpos[:, None]  # [q,S]
        if W is not None:
            allowed = allowed & (kpos[None, :] > qpos[:, None] - W)
        allowed = allowed[None].expand(B, q, S)
        if key_valid is not None:
            allowed = allowed & key_valid[:, None, kstart:end]
            # a padding query attends to itself, so no row is empty (no NaN in the cache)
            allowed = allowed | (kpos[None, None, :] == qpos[None, :, None])
        return allowed.unsqueeze(1)
