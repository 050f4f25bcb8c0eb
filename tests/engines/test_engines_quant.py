import json

import pytest
import torch

from engines.int4_layer import FusedPart, Int4Linear
from engines.quant import (
    ARTIFACT_CONFIG,
    ARTIFACT_FILE,
    dequantize,
    pack_codes,
    quantize_weight,
    unpack_codes,
)


def _kernel_vs_reference(n, k, g, batch, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(n, k) * 0.05
    codes, scales, zeros = quantize_weight(w, g)
    ref_w = dequantize(codes, scales, zeros, g)
    lin = Int4Linear(k, n, bias=False, group_size=g, device="meta")
    kt = Int4Linear.kernel_tensors(codes, scales, zeros, "cpu")
    lin = Int4Linear(k, n, bias=False, group_size=g, packed_shape=tuple(kt["weight_packed"].shape))
    lin.load_state_dict(kt, assign=True)
    x = torch.randn(batch, k)
    y = lin(x)
    # reference: same bf16-rounded activations, fp32 dequantized weights
    ref = x.to(torch.bfloat16).float() @ ref_w.t()
    abs_err = (y - ref).abs().max().item()
    rel_err = abs_err / ref.abs().max().item()
    return abs_err, rel_err, w, ref_w


@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("batch", [1, 7, 32])
def test_kernel_matches_dequantize_reference(g, batch):
    abs_err, rel_err, _, _ = _kernel_vs_reference(256, 512, g, batch)
    print(f"int4 kernel vs dequantize reference g={g} batch={batch}: max abs {abs_err:.3e} max rel {rel_err:.3e}")
    assert rel_err < 1e-2


def test_quantization_error_and_clip_search():
    torch.manual_seed(1)
    w = torch.randn(128, 512)
    w[0, 3] = 12.0  # an outlier
    for g in (32, 64, 128):
        c0, s0, z0 = quantize_weight(w, g, clip_search=False)
        c1, s1, z1 = quantize_weight(w, g, clip_search=True)
        e0 = (dequantize(c0, s0, z0, g) - w).pow(2).mean()
        e1 = (dequantize(c1, s1, z1, g) - w).pow(2).mean()
        assert e1 <= e0 + 1e-9
        assert (e1 / w.pow(2).mean()) < 0.02  # ~4-bit: a few percent relative MSE
        assert c1.dtype == torch.uint8 and int(c1.max()) <= 15
        assert s1.dtype == torch.bfloat16 and s1.shape == (128, 512 // g)


def test_pack_unpack_roundtrip():
    c = torch.randint(0, 16, (32, 64), dtype=torch.uint8)
    p = pack_codes(c)
    assert p.shape == (32, 32) and p.dtype == torch.uint8
    assert torch.equal(unpack_codes(p), c)


def test_artifact_holds_raw_codes_scales_zeros(tiny_specs):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    art = tiny_specs["v2-int4"].checkpoint
    meta = json.loads(open(f"{art}/{ARTIFACT_CONFIG}").read())
    assert meta["group_size"] == 32 and meta["quantized"]
    src = AutoModelForCausalLM.from_pretrained(tiny_specs["v2-fp32"].checkpoint, local_files_only=True)
    with safe_open(f"{art}/{ARTIFACT_FILE}", framework="pt") as f:
        keys = set(f.keys())
        for name, g in meta["quantized"].items():
            q, s, z = f.get_tensor(f"{name}.qcodes"), f.get_tensor(f"{name}.scales"), f.get_tensor(f"{name}.zeros")
            w = src.get_submodule(name).weight.detach()
            assert q.dtype == torch.uint8 and q.shape == (w.shape[0], w.shape[1] // 2)
            assert s.dtype == z.dtype == torch.bfloat16 and s.shape == (w.shape[0], w.shape[1] // g)
            deq = dequantize(unpack_codes(q), s, z, g)
            rel = ((deq - w).pow(2).mean() / w.pow(2).mean()).sqrt().item()
            assert rel < 0.15, (name, rel)
            assert f"{name}.weight" not in keys  # no float copy of a quantized weight
    n_linear = sum(1 for n, m in src.named_modules() if isinstance(m, torch.nn.Linear))
    assert len(meta["quantized"]) == n_linear  # every decoder Linear and the head


def test_load_meta_assign_and_reference_model(tiny_specs, tiny_engines):
    """Load went through meta + assign (nothing left on meta, Int4Linear everywhere), and the
    whole model on the kernel path matches the same model on the dequantize reference path."""
    from safetensors import safe_open

    from engines import load_engine

    eng = tiny_engines["v2-int4"]
    model = eng.loaded.model
    assert not any(t.device.type == "meta" for t in list(model.parameters()) + list(model.buffers()))
    quantized = eng.loaded.int4["quantized"]
    for name in quantized:  # every quantized Linear is an Int4Linear or a slice of a fused one
        assert isinstance(model.get_submodule(name), (Int4Linear, FusedPart))
    assert any(isinstance(m, FusedPart) for m in model.modules())  # q/k/v, gate/up fused
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    ref = load_engine(tiny_specs["v2-int4"])
    art = tiny_specs["v2-int4"].checkpoint
    with safe_open(f"{art}/{ARTIFACT_FILE}", framework="pt") as f:
        parts: dict = {}
        for name in quantized:  # in module order: q, k, v / gate, up
            mod = ref.loaded.model.get_submodule(name)
            target = mod.fused if isinstance(mod, FusedPart) else mod
            parts.setdefault(id(target), (target, []))[1].append(
                (unpack_codes(f.get_tensor(f"{name}.qcodes")), f.get_tensor(f"{name}.scales"), f.get_tensor(f"{name}.zeros")))
        for target, ps in parts.values():
            target.use_reference(*(torch.cat(x) for x in zip(*ps)))
    ids = [0] + list(range(3, 60))
    a = eng.teacher_forced_logits(ids)
    b = ref.teacher_forced_logits(ids)
    err = (a - b).abs().max().item()
    rel = err / b.abs().max().item()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    print(f"int4 model, kernel vs dequantize reference path: max abs {err:.3e} rel {rel:.3e} top1 {agree:.3f}")
    # a random tiny model amplifies the bf16 accumulation-order differences layer by layer
    assert rel < 0.1 and agree >= 0.9


def test_int4_bytes_much_smaller(tiny_engines):
    fp = tiny_engines["v2-fp32"].loaded
    q = tiny_engines["v2-int4"].loaded
    ratio = q.linear_weight_bytes() / fp.linear_weight_bytes()
    assert ratio < 1 / 5, ratio  # g32 carries more scale/zero overhead than g64
    assert q.weight_bytes() < fp.weight_bytes() / 3


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    from engines.quant import gptq_quantize_weight

    torch.manual_seed(3)
    n, k, g = 64, 256, 64
    mix = torch.randn(k, k) / k ** 0.5 + torch.eye(k)
    x = torch.randn(2048, k) @ mix  # correlated activations
    w = torch.randn(n, k) * 0.05
    h = x.t() @ x / x.shape[0]
    c0, s0, z0 = quantize_weight(w, g, act_scale=torch.diag(h))
    c1, s1, z1 = gptq_quantize_weight(w, h, g)
    ref = x @ w.t()
    e_rtn = (x @ dequantize(c0, s0, z0, g).t() - ref).pow(2).mean()
    e_gptq = (x @ dequantize(c1, s1, z1, g).t() - ref).pow(2).mean()
    assert c1.dtype == torch.uint8 and int(c1.max()) <= 15 and s1.shape == (n, k // g)
    assert e_gptq < 0.8 * e_rtn, (float(e_gptq), float(e_rtn))


def _int4_layer(n, k, g, seed=0, kernel="aten"):
    # torch's kernel layout: the one cpu_dequant_supported() and the unpacker are about
    torch.manual_seed(seed)
    w = torch.randn(n, k) * 0.05
    codes, scales, zeros = quantize_weight(w, g)
    kt = Int4Linear.kernel_tensors(codes, scales, zeros, "cpu", kernel=kernel)
    lin = Int4Linear(k, n, bias=False, group_size=g, packed_shape=tuple(kt["weight_packed"].shape))
    lin.load_state_dict(kt, assign=True)
    return lin, dequantize(codes, scales, zeros, g)


@pytest.mark.parametrize("g", [32, 64, 128])
def test_dequantized_weight_matches_reference(g):
    from engines.int4_layer import cpu_dequant_supported

    if not cpu_dequant_supported():
        pytest.skip("this CPU's packed int4 layout is not the AVX-512 one the unpacker reads")
    lin, ref_w = _int4_layer(192, 256, g)
    w = lin.dequantized()
    assert w.dtype == torch.bfloat16 and w.shape == ref_w.shape
    # exact value rounded once to bf16
    assert torch.equal(w, ref_w.to(torch.bfloat16))


def test_many_rows_take_the_dequantized_path_and_match_reference(monkeypatch):
    import engines.int4_layer as q

    if not q.cpu_dequant_supported():
        pytest.skip("this CPU's packed int4 layout is not the AVX-512 one the unpacker reads")
    lin, ref_w = _int4_layer(128, 512, 64, seed=4)
    x = torch.randn(40, 512)
    ref = x.to(torch.bfloat16).float() @ ref_w.t()
    orig = q.Int4Linear.dequantized
    for rows in (0, 16):  # kernel only (the default); dequantized GEMM from 16 rows on
        lin.dequant_min_rows = rows
        calls = []
        monkeypatch.setattr(q.Int4Linear, "dequantized", lambda self: calls.append(1) or orig(self))
        y = lin(x)
        assert bool(calls) == (rows == 16)
        rel = ((y - ref).abs().max() / ref.abs().max()).item()
        print(f"int4 rows=40 path={'dequant' if calls else 'kernel'}: max rel err vs reference {rel:.2e}")
        assert rel < 1e-2


def test_the_spec_sets_the_dequantized_gemm_threshold_of_every_int4_layer(tiny_specs):
    """``int4_dequant_rows`` is a setting passed in (spec -> load_model -> each layer), never read
    from the environment; 0 (the default) keeps the kernel for any number of rows."""
    from dataclasses import replace

    from engines import EngineSpec, load_engine

    default = load_engine(tiny_specs["v2-int4"])
    opted = load_engine(replace(tiny_specs["v2-int4"], int4_dequant_rows=64))
    layers = [m for m in opted.loaded.model.modules() if isinstance(m, Int4Linear)]
    assert layers and {m.dequant_min_rows for m in layers} == {64}
    assert {m.dequant_min_rows for m in default.loaded.model.modules() if isinstance(m, Int4Linear)} == {0}
    with pytest.raises(ValueError, match="int4_dequant_rows"):
        EngineSpec(name="e", checkpoint="c", int4_dequant_rows=-1)
