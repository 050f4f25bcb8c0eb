"""A lean batched forward over a loaded Llama/Qwen2-family decoder with a preallocated KV cache.

It walks the Hugging Face modules (embeddings, norms, q/k/v/o and MLP projections, rotary
embedding) but replaces the per-step bookkeeping of ``model.forward`` (cache objects, mask
builders, output dataclasses) with a few tensor ops, which is where a small model spends most
of its decode time on CPU.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from engines.kv_ring import ragged_ring_valid, ring_step
from engines.model import LoadedModel, layer_windows
from engines.int4_layer import Int4Linear, fused_silu_mlp

__all__ = ["DecoderRunner"]

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

    An INT4 layer returns bf16 (plus an fp32 bias, if any) and takes fp32 activations as they are
    (:meth:`Int4Linear.project`: its kernel rounds them to bf16): the callers keep that output
    where the next op accepts it (MLP interior, residual add, which promotes) instead of
    converting both ways around every kernel call."""
    if type(mod) is nn.Linear:
        return F.linear(x if x.dtype == mod.weight.dtype else x.to(mod.weight.dtype), mod.weight, mod.bias)
    if type(mod) is Int4Linear:
        return mod.project(x)
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
            if type(gu_mod) is Int4Linear:
                return fused_silu_mlp(mlp, x)
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
        any step. ``end`` = max(slots) + 1; ``cache``: per layer contiguous (k, v) [B, Hkv, T, D]
        (the first B rows of a larger cache are). Returns logits [B, vocab]."""
        B = tok.shape[0]
        h = self._embed(tok[:, None])
        cos = self.cos[slots][:, None, None, :]  # [B,1,1,D]
        sin = self.sin_signed[slots][:, None, None, :]
        kpos = torch.arange(end, device=self.device)[None, :]
        causal = kpos <= slots[:, None]  # [B, end]
        masks: dict = {}
        flat: dict = {}
        rows = torch.arange(B, device=self.device)
        Hkv, D = self.n_kv, self.head_dim

        def attend(li: int, qs, ks, vs):
            W = self.windows[li]
            kc, vc = cache[li]
            T = kc.shape[2]
            ring = W is not None and T < end
            key = ("ring", W) if ring else W
            if key not in masks:
                m = ragged_ring_valid(slots, T) if ring else (
                    causal if W is None else causal & (kpos > (slots[:, None] - W)))
                masks[key] = m[:, None, None, :]
            if T not in flat:  # row b, head h, slot slots[b] % T of the [B, Hkv, T, D] cache, as one index
                heads = torch.arange(Hkv, device=self.device)
                flat[T] = ((rows[:, None] * Hkv + heads[None, :]) * T + (slots % T)[:, None]).reshape(-1)
            # one index_copy_ per tensor (advanced-index assignment cost ~10x more per step)
            kc.view(B * Hkv * T, D).index_copy_(0, flat[T], ks.reshape(B * Hkv, D))
            vc.view(B * Hkv * T, D).index_copy_(0, flat[T], vs.reshape(B * Hkv, D))
            n = T if ring else end
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
