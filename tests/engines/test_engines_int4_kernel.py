"""The batched INT4 CPU kernels (engines.int4): layout, accuracy against the dequantize
reference, a row's independence of its batch, dispatch and fallback. The whole engine's batch
invariance: test_engines_int4_batches.py."""

import logging

import pytest
import torch

from engines import int4
from engines.int4 import layout
from engines.int4_layer import Int4Linear
from engines.quant import dequantize, quantize_weight

needs_kernel = pytest.mark.skipif(not int4.kernel_available(),
                                  reason="the batched int4 kernel needs an AVX-512 CPU (falls back to aten)")
needs_amx = pytest.mark.skipif(not int4.amx_available(), reason="the AMX tile kernel needs a CPU with AMX")

# bf16 output (8 significant bits): one rounding of an fp32 sum moves it by at most 2**-8 of
# its magnitude (3.9e-3 of the largest |output|), plus fp32 summation-order noise; measured max
# 3.4e-3 over the shapes below
REL_TOL = 5e-3


def _weights(n, k, g, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    codes, scales, zeros = quantize_weight(w, g)
    return codes, scales, zeros


def _layer(codes, scales, zeros, kernel):
    n, k = codes.shape
    g = k // scales.shape[1]
    kt = Int4Linear.kernel_tensors(codes, scales, zeros, "cpu", kernel=kernel)
    lin = Int4Linear(k, n, bias=False, group_size=g, packed_shape=tuple(kt["weight_packed"].shape))
    lin.load_state_dict(kt, assign=True)
    return lin


def _rel(y, ref):
    return ((y.float() - ref).abs().max() / ref.abs().max()).item()


KERNELS = ["fma", "dot", "amx"]  # fp32 FMA (any AVX-512 CPU); AVX512-BF16 dot products; AMX tiles


def _skip_unless_runs(kernel):
    if kernel == "amx" and not int4.amx_available():
        pytest.skip("the AMX tile kernel needs a CPU with AMX")
    if kernel == "dot" and not torch.ops.abtest_int4.int4_dot_available():
        pytest.skip("the dot-product kernel needs a CPU with AVX512-BF16")


def _kernel_mm(kernel, x, lin):
    """One kernel's op, called directly (the layer's dispatch picks one per CPU and row count)."""
    ops = torch.ops.abtest_int4
    if kernel == "amx":
        return ops.int4_mm_amx(x.to(torch.bfloat16), lin.weight_packed, lin.group_size, lin.scales_and_zeros)
    op = ops.int4_mm_dot if kernel == "dot" else ops.int4_mm
    return op(x, lin.weight_packed, lin.group_size, lin.scales_and_zeros)


def test_layout_roundtrip_and_byte_order():
    gen = torch.Generator().manual_seed(1)
    c = torch.randint(0, 16, (48, 96), generator=gen, dtype=torch.uint8)
    p = layout.pack(c)
    assert p.shape == layout.packed_shape(48, 96) == (3, 48, 16) and p.dtype == torch.uint8
    assert torch.equal(layout.unpack(p), c)
    # block 2, k-pair 5, byte 7: column 2*16 + 7, low nibble k = 10, high nibble k = 11
    assert int(p[2, 5, 7]) == int(c[39, 10]) | (int(c[39, 11]) << 4)
    assert layout.supports(48, 96, 32) and not layout.supports(40, 96, 32) and not layout.supports(48, 96, 64)


@needs_kernel
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n,k,g", [(256, 512, 64), (48, 96, 32), (80, 256, 128), (1040, 320, 32)])
@pytest.mark.parametrize("m", [1, 3, 8, 17, 32, 128])
def test_batched_kernels_match_dequantize_reference(kernel, n, k, g, m):
    """The fp32-FMA, the AVX512-BF16 dot-product and the AMX kernel, each at every row count,
    against the reference. The AMX kernel's bf16 weights add one rounding (2**-9 relative per
    weight): twice the bound. The dot kernel's products are exact, as the FMA kernel's."""
    _skip_unless_runs(kernel)
    codes, scales, zeros = _weights(n, k, g)
    lin = _layer(codes, scales, zeros, "batched")
    assert lin.kernel == "batched"
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    ref = x.to(torch.bfloat16).float() @ dequantize(codes, scales, zeros, g).t()
    y = _kernel_mm(kernel, x, lin)
    rel = _rel(y, ref)
    print(f"{kernel} int4 kernel n={n} k={k} g={g} m={m}: max rel err vs dequantize reference {rel:.2e}")
    assert y.shape == (m, n) and rel < (2 * REL_TOL if kernel == "amx" else REL_TOL)


@needs_kernel
@pytest.mark.parametrize("m", [1, 8, 33])
def test_aten_fallback_agrees_with_batched_kernel(m):
    codes, scales, zeros = _weights(512, 1024, 64, seed=2)
    new, old = _layer(codes, scales, zeros, "batched"), _layer(codes, scales, zeros, "aten")
    assert (new.kernel, old.kernel) == ("batched", "aten")
    x = torch.randn(m, 1024, generator=torch.Generator().manual_seed(3))
    ref = x.to(torch.bfloat16).float() @ dequantize(codes, scales, zeros, 64).t()
    a, b = _rel(old(x), ref), _rel(new(x), ref)
    print(f"m={m}: max rel err vs reference aten {a:.2e} batched {b:.2e}; batched vs aten {_rel(new(x), old(x).float()):.2e}")
    assert a < REL_TOL and b < REL_TOL and _rel(new(x), old(x).float()) < 2 * REL_TOL


@needs_kernel
@pytest.mark.parametrize("kernel", KERNELS)
def test_a_row_does_not_depend_on_the_batch_or_threads(kernel):
    _skip_unless_runs(kernel)
    codes, scales, zeros = _weights(272, 384, 64, seed=4)  # 17 column blocks: a partial tile
    lin = _layer(codes, scales, zeros, "batched")
    gen = torch.Generator().manual_seed(5)
    row = torch.randn(1, 384, generator=gen)
    alone = _kernel_mm(kernel, row, lin)
    threads = torch.get_num_threads()
    try:
        for m, nt in ((2, 1), (7, 1), (32, 2), (129, 2)):
            torch.set_num_threads(nt)
            others = torch.randn(m - 1, 384, generator=gen) * 3
            for pos in (0, m // 2, m - 1):
                batch = torch.cat([others[:pos], row, others[pos:]])
                assert torch.equal(_kernel_mm(kernel, batch, lin)[pos], alone[0]), (m, pos, nt)
    finally:
        torch.set_num_threads(threads)


@needs_amx
def test_amx_from_its_row_threshold_on(monkeypatch):
    """The layer's amx_min_rows picks the kernel by row count; across the threshold a row's
    result moves only by the two kernels' rounding."""
    codes, scales, zeros = _weights(160, 256, 64, seed=10)
    lin = _layer(codes, scales, zeros, "batched")
    assert lin.amx_min_rows == 4  # the spec's default
    used = []
    amx, fma = torch.ops.abtest_int4.int4_mm_amx, torch.ops.abtest_int4.int4_mm

    class Ops:
        def int4_mm_amx(self, *a):
            used.append("amx")
            return amx(*a)

        def int4_mm(self, *a):
            used.append("fma")
            return fma(*a)

    monkeypatch.setattr(int4, "_ops", Ops())
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(9, 256, generator=gen)
    ref = x.to(torch.bfloat16).float() @ dequantize(codes, scales, zeros, 64).t()
    for m, kernel in ((1, "fma"), (3, "fma"), (4, "amx"), (9, "amx")):
        used.clear()
        y = lin(x[:m])
        assert used == [kernel], m
        assert _rel(y, ref[:m]) < 2 * REL_TOL
    assert _rel(lin(x[:1]), lin(x)[:1].float()) < 2 * REL_TOL
    lin.amx_min_rows = 0
    used.clear()
    lin(x)
    assert used == ["fma"]


@needs_amx
def test_fused_gate_up_silu_on_amx():
    """silu(gate) * up straight from one AMX call on a fused [gate; up] weight: within the AMX
    kernel's tolerance of the fp32 reference, a row's bits independent of the batch, and not
    offered below the layer's AMX threshold (the caller then runs the projection and the product)."""
    n, k, g = 320, 256, 64  # gate and up of 160 outputs each: five 32-column strips per half
    codes, scales, zeros = _weights(n, k, g, seed=12)
    lin = _layer(codes, scales, zeros, "batched")
    w = dequantize(codes, scales, zeros, g)
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(129, k, generator=gen)
    ref_gu = x.to(torch.bfloat16).float() @ w.t()
    ref = torch.nn.functional.silu(ref_gu[:, : n // 2]) * ref_gu[:, n // 2:]
    assert lin.silu_glu(x[:3]) is None  # below amx_min_rows (4)
    lin.amx_min_rows = 1
    full = lin.silu_glu(x)
    assert full.shape == (129, n // 2) and full.dtype == torch.bfloat16
    rel = _rel(full, ref)
    print(f"fused gate/up silu on AMX: max rel err vs reference {rel:.2e}")
    assert rel < 2 * REL_TOL
    for m in (1, 4, 17, 32, 33):
        assert torch.equal(lin.silu_glu(x[:m]), full[:m]), m
    lin.amx_min_rows = 0
    assert lin.silu_glu(x) is None


needs_dot_dispatch = pytest.mark.skipif(not (int4.kernel_available() and int4.dot_available()),
                                        reason="the layer runs the dot kernel on a CPU with AVX512-BF16 and no AMX")


@needs_dot_dispatch
def test_dot_kernel_serves_every_row_count(monkeypatch):
    """On a CPU with AVX512-BF16 and no AMX, a layer runs the dot-product kernel at every row
    count (one kernel: a row's bits never depend on the batch), whatever amx_min_rows says."""
    codes, scales, zeros = _weights(160, 256, 64, seed=16)
    lin = _layer(codes, scales, zeros, "batched")
    used = []
    dot = torch.ops.abtest_int4.int4_mm_dot

    class Ops:
        def int4_mm_dot(self, *a):
            used.append("dot")
            return dot(*a)

        def int4_mm(self, *a):  # pragma: no cover - would be a dispatch bug
            used.append("fma")
            return torch.ops.abtest_int4.int4_mm(*a)

    monkeypatch.setattr(int4, "_ops", Ops())
    x = torch.randn(9, 256, generator=torch.Generator().manual_seed(17))
    for rows in (0, 4):
        lin.amx_min_rows = rows
        for m in (1, 3, 4, 9):
            used.clear()
            lin(x[:m])
            assert used == ["dot"], (rows, m)


@needs_dot_dispatch
def test_fused_gate_up_silu_on_the_dot_kernel():
    """silu(gate) * up straight from one dot-kernel call on a fused [gate; up] weight: within the
    kernel's tolerance of the fp32 reference, a row's bits independent of the batch, at every row
    count (no AMX threshold on this kernel)."""
    n, k, g = 352, 256, 64  # gate and up of 176 outputs each: two full 64-column tiles and a partial
    codes, scales, zeros = _weights(n, k, g, seed=18)
    lin = _layer(codes, scales, zeros, "batched")
    w = dequantize(codes, scales, zeros, g)
    x = torch.randn(129, k, generator=torch.Generator().manual_seed(19))
    ref_gu = x.to(torch.bfloat16).float() @ w.t()
    ref = torch.nn.functional.silu(ref_gu[:, : n // 2]) * ref_gu[:, n // 2:]
    full = lin.silu_glu(x)
    assert full is not None and full.shape == (129, n // 2) and full.dtype == torch.bfloat16
    rel = _rel(full, ref)
    print(f"fused gate/up silu on the dot kernel: max rel err vs reference {rel:.2e}")
    assert rel < REL_TOL
    for m in (1, 3, 4, 5, 17, 33):
        assert torch.equal(lin.silu_glu(x[:m]), full[:m]), m
    # the same numbers as the unfused projection in fp32 sums, up to the one rounding of each half
    unfused = lin.project(x).float()
    two = torch.nn.functional.silu(unfused[:, : n // 2]) * unfused[:, n // 2:]
    assert _rel(full, two) < 2 * REL_TOL


def test_spec_int4_amx_rows_field():
    from engines.spec import EngineSpec

    assert EngineSpec(name="a", checkpoint="x").int4_amx_rows == 4
    for bad in (-1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="int4_amx_rows"):
            EngineSpec(name="a", checkpoint="x", precision="int4", group_size=64, int4_amx_rows=bad)


@needs_kernel
def test_fp32_activations_are_rounded_by_the_kernel_as_by_torch():
    """int4_mm takes fp32 rows and rounds them to bf16 itself, to the same bits as x.to(bf16)
    (nearest even: ties included), and the layer's project() gives forward()'s bits."""
    codes, scales, zeros = _weights(64, 256, 64, seed=14)
    lin = _layer(codes, scales, zeros, "batched")
    lin.amx_min_rows = 0
    gen = torch.Generator().manual_seed(15)
    x = torch.randn(3, 256, generator=gen)
    bits = x.view(torch.int32)
    bits[0, :64] = (bits[0, :64] & ~0xFFFF) | 0x8000  # exact ties between two bf16 values
    bits[1, :64] = (bits[1, :64] & ~0xFFFF) | 0x18000
    x[2, :4] = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0])
    y32 = torch.ops.abtest_int4.int4_mm(x, lin.weight_packed, 64, lin.scales_and_zeros)
    y16 = torch.ops.abtest_int4.int4_mm(x.to(torch.bfloat16), lin.weight_packed, 64, lin.scales_and_zeros)
    assert y32.dtype == torch.bfloat16 and torch.equal(y32[:2], y16[:2])
    assert torch.equal(y32[2].isnan(), y16[2].isnan())
    ok = x[:2]
    assert torch.equal(lin.project(ok), lin(ok.to(torch.bfloat16)))
    assert lin.project(ok).dtype == torch.bfloat16 and lin(ok).dtype == torch.float32


@needs_kernel
def test_dequantized_weight_and_gemm_path():
    codes, scales, zeros = _weights(160, 256, 32, seed=6)
    lin = _layer(codes, scales, zeros, "batched")
    ref_w = dequantize(codes, scales, zeros, 32)
    assert torch.equal(lin.dequantized(), ref_w.to(torch.bfloat16))  # one rounding of the exact value
    x = torch.randn(300, 256, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16)
    y = int4.dequant_matmul(x, lin.weight_packed, 32, lin.scales_and_zeros)
    rel = _rel(y, x.float() @ ref_w.t())
    print(f"dequantize + bf16 GEMM path: max rel err vs reference {rel:.2e}")
    assert rel < 2 * REL_TOL  # bf16 weights: one more rounding than the kernel


def test_dispatch_on_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512bw\n")
    flags = int4.cpu_flags(info)
    assert "avx512f" in flags and int4.cpu_supports_batched(flags)
    assert not int4.cpu_supports_batched(frozenset({"avx2", "fma"}))
    assert int4.cpu_flags(tmp_path / "missing") == frozenset()
    assert int4.resolve_kernel("aten") == "aten"
    with pytest.raises(ValueError, match="int4 kernel"):
        int4.resolve_kernel("vnni")


def test_build_failure_falls_back_with_one_warning(monkeypatch, caplog):
    import engines.int4.build as build

    monkeypatch.setattr(int4, "_state", {})
    monkeypatch.setattr(int4, "cpu_supports_batched", lambda flags=None: True)
    calls = []

    def broken(*a, **k):
        calls.append(1)
        raise RuntimeError("compiler exploded")

    monkeypatch.setattr(build, "load_kernel", broken)
    with caplog.at_level(logging.WARNING, logger="engines.int4"):
        assert int4.resolve_kernel("auto") == "aten"
        assert int4.resolve_kernel("batched") == "aten"
        codes, scales, zeros = _weights(64, 128, 32)
        lin = _layer(codes, scales, zeros, "auto")
    assert lin.kernel == "aten" and len(calls) == 1
    warnings = [r for r in caplog.records if "compiler exploded" in r.getMessage()]
    assert len(warnings) == 1
    x = torch.randn(5, 128)
    assert _rel(lin(x), x.to(torch.bfloat16).float() @ dequantize(codes, scales, zeros, 32).t()) < REL_TOL


def test_build_cache_dir_is_versioned(tmp_path):
    from engines.int4.build import build_dir

    d = build_dir(tmp_path)
    assert d.parent == tmp_path and d.name.startswith("abtest_int4-")
    assert build_dir(tmp_path) == d


def test_spec_int4_kernel_field():
    from engines.spec import EngineSpec

    assert EngineSpec(name="a", checkpoint="x").int4_kernel == "auto"
    with pytest.raises(ValueError, match="int4_kernel"):
        EngineSpec(name="a", checkpoint="x", precision="int4", group_size=64, int4_kernel="fast")


@needs_kernel
def test_many_rows_take_the_gemm_path_only_when_opted_in(monkeypatch):
    codes, scales, zeros = _weights(128, 512, 64, seed=8)
    lin = _layer(codes, scales, zeros, "batched")
    x = torch.randn(40, 512, generator=torch.Generator().manual_seed(9))
    ref = x.to(torch.bfloat16).float() @ dequantize(codes, scales, zeros, 64).t()
    orig = int4.dequant_matmul
    for rows in (0, 16, 41):  # off (the default); from 16 rows on; from 41 rows on
        lin.dequant_min_rows = rows
        calls = []
        monkeypatch.setattr(int4, "dequant_matmul", lambda *a: calls.append(1) or orig(*a))
        y = lin(x)
        assert bool(calls) == (rows == 16)
        assert _rel(y, ref) < 2 * REL_TOL


@needs_kernel
def test_two_processes_building_at_once_both_load(tmp_path):
    """Two processes starting on an empty cache: the lock lets one build while the other waits,
    then both load the same library."""
    import subprocess
    import sys

    code = ("import sys; from engines.int4.build import load_kernel, build_dir; "
            "load_kernel(sys.argv[1]); import torch; "
            "print(build_dir(sys.argv[1]), hasattr(torch.ops.abtest_int4, 'int4_mm'))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert out.split()[-1] == "True"
    folders = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert len(folders) == 1 and (folders[0] / "abtest_int4.so").is_file()
