"""Batched INT4 matmul for CPUs: kernel choice at run time, packing, and the matmul itself.

Two CPU kernel families multiply bf16 activations by group-wise INT4 weights (``w = (q - 8) * s + z``):

- ``"batched"``: this package's C++ kernel (``kernel.cpp``, built on first use): each group of
  weight codes is unpacked once per 64 output columns and reused for every row of the batch,
  fp32 FMAs in a fixed reduction order, so a row's result is bit-identical whatever else is in
  the batch. Needs AVX-512 F (Intel Skylake-SP and later, AMD Zen 4 and later).
  Where the CPU has AVX512-BF16 but no AMX (AMD Zen 4 and later, Intel Cooper Lake), the same
  packed weights and arithmetic run as vdpbf16ps dot products instead (``dot.cpp``: codes
  unpacked to exact bf16 ``q - 8``, two multiply-adds per lane and instruction, fp32 sums in
  one fixed order for every row count): measured on a 2-core Zen 5 (``benchmarks.int4_kernel``),
  1.6-1.8x the FMA kernel from 8 rows on and 1.1x at 1 row, bit-identical across batch sizes.
  From ``amx_min_rows`` rows on, where the CPU has Intel AMX, the same packed weights go through
  ``amx.cpp`` instead: each 32-column strip of the weight is rebuilt as bf16 tiles once per call
  (one rounding of ``(q - 8) * s + z``) and multiplied with TDPBF16PS, fp32 accumulation over
  k ascending; every row takes the same tile path (rows padded to 16), so here too a row's
  result does not depend on the rows beside it. Measured on the demo shapes: 5-7x the fp32 FMA
  kernel from 32 rows on; its fixed rebuild cost makes it slower below about 4 rows.
- ``"aten"``: torch's ``_weight_int4pack_mm_for_cpu`` (4 rows at a time, fp32 arithmetic, B
  re-read for every 4 rows). Any CPU; the fallback.

``kernel="auto"`` picks ``batched`` when the CPU has the flags and the kernel builds and loads;
otherwise ``aten``, with one logged warning saying why.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from engines.int4 import layout
from engines.spec import INT4_KERNELS

__all__ = ["KERNELS", "cpu_flags", "cpu_supports_batched", "kernel_available", "resolve_kernel",
           "pack", "packed_kernel", "matmul", "dequant_matmul", "unpack_codes", "build_seconds",
           "amx_available", "amx_supports", "dot_available", "glu_supported", "silu_glu"]

log = logging.getLogger(__name__)

KERNELS = INT4_KERNELS
_FLAGS = ("avx512f", "fma")

_lock = threading.Lock()
_state: dict[str, object] = {}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty when unreadable."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_batched(flags: frozenset[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return all(f in flags for f in _FLAGS)


def kernel_available() -> bool:
    """Whether ``batched`` runs here: CPU flags present, kernel built and loaded (once per process;
    a failure is logged once and remembered)."""
    with _lock:
        if "ok" not in _state:
            if not cpu_supports_batched():
                _state["ok"] = False
                _state["why"] = f"CPU lacks one of {', '.join(_FLAGS)}"
            else:
                try:
                    from engines.int4.build import load_kernel

                    _state["build_s"] = load_kernel()
                    _state["ok"] = True
                except Exception as e:  # noqa: BLE001 - any build/load failure: fall back
                    _state["ok"] = False
                    _state["why"] = f"kernel build failed: {type(e).__name__}: {str(e)[-500:]}"
            if not _state["ok"]:
                log.warning("int4: using torch's _weight_int4pack_mm_for_cpu (%s)", _state["why"])
        return bool(_state["ok"])


def resolve_kernel(kernel: str, device: torch.device | str = "cpu") -> str:
    """``"auto"``/``"batched"``/``"aten"`` -> the kernel a CPU layer will use (``"cuda"`` on a GPU).
    ``"batched"`` asked for explicitly but unavailable falls back to ``"aten"`` the same way."""
    if kernel not in KERNELS:
        raise ValueError(f"int4 kernel must be one of {KERNELS}, got {kernel!r}")
    if torch.device(device).type == "cuda":
        return "cuda"
    if kernel == "aten":
        return "aten"
    return "batched" if kernel_available() else "aten"


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Raw codes [n, k] -> the ``batched`` layout (uint8 [n/16, k/2, 16])."""
    return layout.pack(codes)


def packed_kernel(shape: tuple[int, ...], n: int, k: int) -> str:
    """Which CPU kernel a packed weight of this shape belongs to."""
    return "batched" if tuple(shape) == layout.packed_shape(n, k) else "aten"


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    return layout.unpack(packed)


def amx_available() -> bool:
    """Whether the AMX tile kernel runs here: the kernel library loaded, the CPU has AMX-TILE,
    AMX-BF16, AVX512-BF16 and AVX512-BW, and the OS let this process use tile data."""
    if "amx" not in _state:
        ok = kernel_available() and bool(torch.ops.abtest_int4.int4_amx_available())
        _state["amx"] = ok
    return bool(_state["amx"])


def dot_available() -> bool:
    """Whether the batched kernel runs as AVX512-BF16 dot products here: the kernel library
    loaded, the CPU has AVX512-BF16 and AVX512-BW, and no AMX (where AMX runs the batches, the
    fp32-FMA kernel takes the few-row calls: on Sapphire Rapids two FMAs retire per cycle
    against one vdpbf16ps per two)."""
    if "dot" not in _state:
        _state["dot"] = (kernel_available() and not amx_available()
                         and bool(torch.ops.abtest_int4.int4_dot_available()))
    return bool(_state["dot"])


def amx_supports(k: int, group_size: int) -> bool:
    """Whether the AMX kernel takes this input width and group size (both multiples of 32)."""
    return k % 32 == 0 and group_size % 32 == 0


def matmul(x: torch.Tensor, packed: torch.Tensor, group_size: int, scales_and_zeros: torch.Tensor,
           amx_min_rows: int = 0) -> torch.Tensor:
    """bf16 (or fp32, rounded to bf16 by the kernel) [m, k] x ``batched``-packed weight -> bf16
    [m, n] (fp32 sums, rounded once).

    From ``amx_min_rows`` rows on (0: never), where :func:`amx_available`, the AMX tile kernel:
    weights rounded once to bf16, tile dot products. Else, where :func:`dot_available`, the
    AVX512-BF16 dot-product kernel at every row count; else the fp32-FMA kernel. Every kernel
    gives a row a result that does not depend on the other rows of a call; across the AMX
    threshold the two differ by their rounding (both within ~4e-3 of the largest output of the
    dequantize reference)."""
    if not _state.get("ok") and not kernel_available():
        raise RuntimeError(f"the batched int4 kernel is unavailable here ({_state.get('why')})")
    if 0 < amx_min_rows <= x.shape[0] and amx_supports(x.shape[1], group_size) and amx_available():
        return _ops.int4_mm_amx(x if x.dtype == torch.bfloat16 else x.to(torch.bfloat16), packed, group_size,
                                scales_and_zeros)
    if dot_available():
        return _ops.int4_mm_dot(x, packed, group_size, scales_and_zeros)
    return _ops.int4_mm(x, packed, group_size, scales_and_zeros)


class _KernelOps:
    """The library's ops, looked up when called (the library loads on first use)."""

    def __getattr__(self, name: str):
        return getattr(torch.ops.abtest_int4, name)


_ops = _KernelOps()
_scratch = threading.local()


def dequant_matmul(x: torch.Tensor, packed: torch.Tensor, group_size: int,
                   scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """bf16 [m, k] x ``batched``-packed weight via the weight dequantized to bf16 (each value
    rounded once) and one oneDNN bf16 GEMM (AMX where the CPU has it): much faster for many
    rows, but rounds differently from :func:`matmul` and oneDNN picks its algorithm by shape, so
    a row's result can change with the batch. The bf16 weight goes into a per-thread scratch
    buffer reused from call to call."""
    if not _state.get("ok") and not kernel_available():
        raise RuntimeError(f"the batched int4 kernel is unavailable here ({_state.get('why')})")
    n, k = packed.shape[0] * 16, packed.shape[1] * 2
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < n * k:
        buf = _scratch.buf = torch.empty(n * k, dtype=torch.bfloat16)
    wt = torch.ops.abtest_int4.int4_dequant_t(packed, group_size, scales_and_zeros, buf[: n * k])
    return torch.mm(x, wt.view(k, n))


def _glu_on_amx(n: int, k: int, group_size: int, rows: int, amx_min_rows: int) -> bool:
    return 0 < amx_min_rows <= rows and n % 64 == 0 and amx_supports(k, group_size) and amx_available()


def glu_supported(n: int, k: int, group_size: int, rows: int, amx_min_rows: int) -> bool:
    """Whether :func:`silu_glu` takes a fused [gate; up] weight of ``n`` outputs for ``rows`` rows:
    on the AMX kernel (from ``amx_min_rows`` rows on) or the AVX512-BF16 dot kernel (any rows)."""
    return _glu_on_amx(n, k, group_size, rows, amx_min_rows) or (n % 32 == 0 and dot_available())


def silu_glu(x: torch.Tensor, packed: torch.Tensor, group_size: int, scales_and_zeros: torch.Tensor,
             amx_min_rows: int = 0) -> torch.Tensor:
    """``silu(x @ gate.T) * (x @ up.T)`` for a ``batched``-packed fused weight whose first half of
    outputs is the gate and second half the up projection: bf16 [m, n/2], from the kernel's fp32
    sums with one rounding (no bf16 gate and up in between, no fp32 copies of them). The kernel
    is the one :func:`matmul` would pick (:func:`glu_supported` says whether there is one)."""
    n, k = packed.shape[0] * 16, packed.shape[1] * 2
    if _glu_on_amx(n, k, group_size, x.shape[0], amx_min_rows):
        return _ops.int4_mm_amx_glu(x, packed, group_size, scales_and_zeros)
    return _ops.int4_mm_dot_glu(x, packed, group_size, scales_and_zeros)


def build_seconds() -> float | None:
    """How long this process spent building/loading the kernel (None: not loaded)."""
    v = _state.get("build_s")
    return float(v) if v is not None else None
