"""The runtime INT4 layer: packed 4-bit weights in the layout of this device's matmul kernel.

An INT4 artifact (:mod:`engines.quant`, the offline side) stores raw codes, scales and zeros;
loading (:mod:`engines.model`) packs them here for the device (:func:`Int4Linear.kernel_tensors`)
and installs :class:`Int4Linear` layers, :class:`FusedPart` views of fused projections and a
:class:`BF16Embedding`. On CPU the layer runs this project's batched kernel
(:mod:`engines.int4`) where the CPU has it, else torch's ``_weight_int4pack_mm_for_cpu``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from engines import int4 as _int4
from engines.quant import dequantize

__all__ = ["Int4Linear", "FusedPart", "BF16Embedding", "cpu_dequant_supported", "set_dequant_rows", "set_amx_rows",
           "fused_silu_mlp", "install_fused_mlp"]




def _kernel_pack(codes: torch.Tensor, device: torch.device, kernel: str = "aten") -> torch.Tensor:
    """Raw codes [out,in] -> the packed layout of this device's int4 matmul kernel."""
    if kernel == "batched":
        return _int4.pack(codes).to(device)
    if device.type == "cuda":
        c = codes.to(torch.int32)
        w_uint8 = ((c[:, ::2] << 4) | c[:, 1::2]).to(torch.uint8).to(device)
        return torch.ops.aten._convert_weight_to_int4pack(w_uint8, 8)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).to(device), 2)


def _scales_and_zeros(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    n = scales.shape[0]
    sz = torch.cat([scales.reshape(n, -1, 1), zeros.reshape(n, -1, 1)], 2)
    return sz.transpose(0, 1).contiguous().to(torch.bfloat16)


def _unpack_cpu_kernel_layout(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Codes [n, k] (uint8) back out of ``_convert_weight_to_int4pack_for_cpu``'s AVX-512 layout:
    [n/64, k, 32] bytes; byte d < 16 holds rows d (low nibble) and d+32 (high nibble) of its
    block of 64, byte 16+d rows 16+d and 48+d."""
    p = packed.view(n // 64, k, 2, 16)
    lohi = torch.stack((p & 15, p >> 4), 1)  # [n/64, 2 (lo, hi), k, 2, 16]
    return lohi.permute(0, 1, 3, 4, 2).reshape(n, k)


_CPU_LAYOUT_OK: bool | None = None


def cpu_dequant_supported() -> bool:
    """Whether this CPU's packed int4 layout is the one :func:`_unpack_cpu_kernel_layout` reads
    (the layout depends on the CPU capability torch dispatches to); checked once on a probe."""
    global _CPU_LAYOUT_OK
    if _CPU_LAYOUT_OK is None:
        try:
            g = torch.Generator().manual_seed(0)
            codes = torch.randint(0, 16, (128, 256), generator=g, dtype=torch.int32)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
            _CPU_LAYOUT_OK = bool(torch.equal(_unpack_cpu_kernel_layout(packed, 128, 256).to(torch.int32), codes))
        except Exception:  # noqa: BLE001 - any surprise: keep the kernel path only
            _CPU_LAYOUT_OK = False
    return _CPU_LAYOUT_OK




class Int4Linear(nn.Module):
    """Linear layer with packed int4 weights; bf16 activations into the kernel, output in the
    input's dtype. Built on the meta device and filled with ``load_state_dict(assign=True)``."""

    # Opt-in (the spec's int4_dequant_rows, set by set_dequant_rows): from this many rows (tokens)
    # on, a CPU layer dequantizes its weight to bf16 and runs one bf16 GEMM instead of the int4
    # kernel, whose cost is linear in the rows (it is built for decode); below ~256 rows the
    # kernel wins. Off (0) by default: the GEMM rounds differently from the kernel, so a
    # request's logits could then depend on how many other rows share its prefill (the engines
    # promise batch-invariant results).
    dequant_min_rows: int = 0
    # From this many rows on (the spec's int4_amx_rows, set by set_amx_rows), a "batched" layer
    # runs the AMX tile kernel where the CPU has AMX: it rebuilds bf16 weights once per 32 columns,
    # a fixed cost that the fp32-FMA kernel's per-row cost passes at about 4 rows. 0: never.
    amx_min_rows: int = 4

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int,
                 device: torch.device | str | None = None, packed_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        # shape of the packed weight depends on the kernel; set properly by from_codes()
        shape = packed_shape or (out_features, in_features // 2)
        self.kernel = _int4.packed_kernel(shape, out_features, in_features)  # CPU: "batched" | "aten"
        self.register_buffer("weight_packed", torch.empty(shape, dtype=torch.uint8, device=device))
        self.register_buffer(
            "scales_and_zeros",
            torch.empty(in_features // group_size, out_features, 2, dtype=torch.bfloat16, device=device),
        )
        if bias:
            self.register_buffer("bias", torch.empty(out_features, device=device))
        else:
            self.bias = None

    @staticmethod
    def kernel_tensors(codes, scales, zeros, device, kernel: str = "auto") -> dict[str, torch.Tensor]:
        """Packed weight and scales for ``device``. ``kernel`` (CPU only): ``"auto"`` (this
        project's batched kernel where the CPU runs it, else torch's), ``"batched"`` or
        ``"aten"`` (force torch's ``_weight_int4pack_mm_for_cpu``); see :mod:`engines.int4`.
        A layer built with the packed shape runs the kernel that layout belongs to."""
        device = torch.device(device)
        n, k = codes.shape
        group_size = k // scales.shape[1]
        kernel = _int4.resolve_kernel(kernel, device)
        if kernel == "batched" and not _int4.layout.supports(n, k, group_size):
            kernel = "aten"
        return {
            "weight_packed": _kernel_pack(codes, device, kernel),
            "scales_and_zeros": _scales_and_zeros(scales, zeros).to(device),
        }

    reference_weight: torch.Tensor | None = None

    def use_reference(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> None:
        """Switch this layer to the plain dequantize reference path (for tests): fp32 weights
        ``(q - 8) * scale + zero`` times the same bf16-rounded activations the kernel sees."""
        self.reference_weight = dequantize(codes, scales, zeros, self.group_size).to(self.scales_and_zeros.device)

    def dequantized(self) -> torch.Tensor:
        """The bf16 weight [out, in] = (q - 8) * scale + zero, unpacked from the CPU kernel layout
        (one rounding to bf16 of the exact value; see :func:`cpu_dequant_supported`)."""
        n, k, g = self.out_features, self.in_features, self.group_size
        if self.kernel == "batched":
            codes = _int4.unpack_codes(self.weight_packed).view(n, k // g, g)
        else:
            codes = _unpack_cpu_kernel_layout(self.weight_packed, n, k).view(n, k // g, g)
        sz = self.scales_and_zeros  # [k/g, n, 2]
        scale = sz[:, :, 0].t().contiguous().unsqueeze(-1)
        zero = sz[:, :, 1].t().contiguous().unsqueeze(-1)
        return torch.addcmul(zero, codes.to(torch.bfloat16).sub_(8), scale).view(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if self.reference_weight is not None:
            y = F.linear(x2.float(), self.reference_weight)
        elif self.kernel == "batched" and not x2.is_cuda:
            if 0 < self.dequant_min_rows <= x2.shape[0]:  # opt-in: bf16 weight, one oneDNN GEMM
                y = _int4.dequant_matmul(x2, self.weight_packed, self.group_size, self.scales_and_zeros)
            else:  # codes unpacked once per batch: AMX tiles from amx_min_rows on, else dot products or FMAs
                y = _int4.matmul(x2, self.weight_packed, self.group_size, self.scales_and_zeros,
                                 amx_min_rows=self.amx_min_rows)
        elif (0 < self.dequant_min_rows <= x2.shape[0] and not x2.is_cuda and self.out_features % 64 == 0
              and cpu_dequant_supported()):
            # many rows (prefill, big batches): dequantize once, one bf16 GEMM
            y = F.linear(x2, self.dequantized())
        elif x2.is_cuda:
            y = torch.ops.aten._weight_int4pack_mm(x2, self.weight_packed, self.group_size, self.scales_and_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2, self.weight_packed, self.group_size, self.scales_and_zeros
            )
        y = y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x.to(bfloat16))``, bf16 out (plus an fp32 bias, if any), without converting
        fp32 activations first where the CPU kernel rounds them itself (the same bits): what the
        engine's decoder calls."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if (self.kernel == "batched" and not x2.is_cuda and self.reference_weight is None
                and not 0 < self.dequant_min_rows <= x2.shape[0]):
            y = _int4.matmul(x2, self.weight_packed, self.group_size, self.scales_and_zeros,
                             amx_min_rows=self.amx_min_rows).reshape(*shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
        return self.forward(x if x.dtype == torch.bfloat16 else x.to(torch.bfloat16))

    def silu_glu(self, x: torch.Tensor) -> torch.Tensor | None:
        """For a fused [gate; up] layer: ``silu(gate(x)) * up(x)`` in bf16 [..., out/2] from one
        kernel call (AMX from ``amx_min_rows`` rows on, else the AVX512-BF16 dot kernel), or None
        where neither applies (a CPU without them, fewer rows than ``amx_min_rows`` on an AMX
        CPU, another kernel, a bias, the reference path)."""
        shape = x.shape
        rows = x.numel() // shape[-1]
        if (self.kernel != "batched" or self.bias is not None or self.reference_weight is not None or x.is_cuda
                or not _int4.glu_supported(self.out_features, self.in_features, self.group_size, rows,
                                           self.amx_min_rows)):
            return None
        x2 = x.reshape(rows, shape[-1]).to(torch.bfloat16)
        y = _int4.silu_glu(x2, self.weight_packed, self.group_size, self.scales_and_zeros, self.amx_min_rows)
        return y.reshape(*shape[:-1], self.out_features // 2)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, group_size={self.group_size}"


class FusedPart(nn.Module):
    """One projection carved out of a fused Int4Linear (q out of qkv, gate out of gate_up).

    Keeps the Hugging Face module tree working (``model.forward`` calls ``q_proj``) without a
    second copy of the weights; the engine's own forward calls the fused layer once instead.
    """

    def __init__(self, fused: nn.Module, start: int, end: int):
        super().__init__()
        object.__setattr__(self, "fused", fused)  # not a submodule: no duplicate state_dict keys
        self.start, self.end = start, end
        self.in_features, self.out_features = fused.in_features, end - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)[..., self.start:self.end]

    def extra_repr(self) -> str:
        return f"fused[{self.start}:{self.end}]"


class BF16Embedding(nn.Embedding):
    """Embedding table stored in bf16 (half the bytes); looks up rows in fp32."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float()


def set_dequant_rows(model: nn.Module, rows: int) -> None:
    """Every CPU :class:`Int4Linear` of ``model`` dequantizes to one bf16 GEMM from ``rows`` rows
    on (0: never, the default)."""
    for module in model.modules():
        if isinstance(module, Int4Linear):
            module.dequant_min_rows = int(rows)


def set_amx_rows(model: nn.Module, rows: int) -> None:
    """Every CPU :class:`Int4Linear` of ``model`` runs the AMX tile kernel from ``rows`` rows on,
    where the CPU has AMX (0: never)."""
    for module in model.modules():
        if isinstance(module, Int4Linear):
            module.amx_min_rows = int(rows)


def fused_silu_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``down(silu(gate(x)) * up(x))`` of an MLP whose gate and up projections are one fused
    :class:`Int4Linear` (``mlp.gate_up_fused``): one kernel call for both projections and the
    product where the AMX or the dot kernel applies (:meth:`Int4Linear.silu_glu`), else one fused
    projection, then silu and the product in fp32. The engine's decoder and the Hugging Face module tree (patched at
    load, :func:`install_fused_mlp`) both run this, so both compute the same numbers."""
    gu = mlp.gate_up_fused
    y = gu.silu_glu(x)
    if y is None:
        gate, up = gu.project(x).chunk(2, dim=-1)
        y = F.silu(gate.float()).mul_(up)
    down = mlp.down_proj
    if type(down) is Int4Linear:
        return down.forward(y)
    return down(y if y.dtype == down.weight.dtype else y.to(down.weight.dtype))


def install_fused_mlp(mlp: nn.Module) -> None:
    """Route a Hugging Face MLP module's forward through :func:`fused_silu_mlp` (it would call the
    fused projection twice, once per FusedPart)."""
    mlp.forward = functools.partial(fused_silu_mlp, mlp)
