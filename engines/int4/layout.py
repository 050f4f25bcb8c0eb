"""The ``batched`` kernel's packed weight layout (pure torch).

uint8 ``[N/16, K/2, 16]``: block ``b`` holds output columns ``16b .. 16b+15``; byte ``c`` of
k-pair ``t`` holds column ``16b + c``: the code of input column ``2t`` in its low nibble, of
``2t + 1`` in its high nibble. The same N*K/2 bytes as the artifact's two codes per byte, only
reordered so that 16 bytes widened to 32-bit lanes give two rows of 16 output columns.
"""

from __future__ import annotations

import torch

__all__ = ["pack", "unpack", "packed_shape", "supports"]


def supports(n: int, k: int, group_size: int) -> bool:
    """Whether the layout (and the kernel) take an [n, k] weight with this group size."""
    return (n > 0 and k > 0 and n % 16 == 0 and group_size > 0 and group_size % 2 == 0
            and group_size <= 256 and k % group_size == 0)


def packed_shape(n: int, k: int) -> tuple[int, int, int]:
    return (n // 16, k // 2, 16)


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Codes [n, k] (0..15, any integer dtype) -> uint8 [n/16, k/2, 16]."""
    n, k = codes.shape
    c = codes.to(torch.uint8).view(n // 16, 16, k // 2, 2)  # [blk, col, pair, parity]
    byte = c[..., 0] | (c[..., 1] << 4)  # [blk, col, pair]
    return byte.transpose(1, 2).contiguous()


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [n/16, k/2, 16] -> codes [n, k] (uint8)."""
    nb, kp, _ = packed.shape
    b = packed.transpose(1, 2)  # [blk, col, pair]
    return torch.stack((b & 15, b >> 4), -1).reshape(nb * 16, kp * 2).contiguous()
