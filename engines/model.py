"""Loading Hugging Face decoders: a checkpoint directory (FP32/BF16/FP16) or an INT4 artifact
(its Int4Linear layers installed at load time), with the float projections fused. The batched
forward over the loaded model is :class:`engines.decoder.DecoderRunner`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from engines.int4_layer import (BF16Embedding, FusedPart, Int4Linear, install_fused_mlp, set_amx_rows,
                                set_dequant_rows)
from engines.quant import ARTIFACT_FILE, is_int4_artifact, read_int4_config, unpack_codes

log = logging.getLogger(__name__)

__all__ = ["LoadedModel", "load_model", "layer_windows"]

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
               group_size: int | None = None, attention: str | None = None,
               int4_kernel: str = "auto", int4_dequant_rows: int = 0, int4_amx_rows: int = 4) -> LoadedModel:
    """Load a HF checkpoint dir (fp32/bf16/fp16) or an INT4 artifact dir (precision 'int4').
    ``int4_kernel``: the CPU int4 matmul (``engines.int4.KERNELS``); ``int4_dequant_rows``: from
    this many rows on, a dequantized bf16 GEMM instead (0: never; :func:`set_dequant_rows`);
    ``int4_amx_rows``: from this many rows on, the AMX tile kernel where the CPU has AMX (0: never;
    :func:`set_amx_rows`)."""
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
        model = _load_int4(path, config, meta, dev, int4_kernel)
        set_dequant_rows(model, int4_dequant_rows)
        set_amx_rows(model, int4_amx_rows)
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


def _load_int4(path: Path, config, meta: dict, dev: torch.device, kernel: str = "auto") -> nn.Module:
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
            kt = Int4Linear.kernel_tensors(torch.cat(codes), torch.cat(scales), torch.cat(zeros), dev, kernel)
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
            if fused_name.endswith(".gate_up_fused") and getattr(config, "hidden_act", None) == "silu":
                install_fused_mlp(model.get_submodule(fused_name.rsplit(".", 1)[0]))
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
