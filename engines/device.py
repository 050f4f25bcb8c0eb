"""Device strings ('cpu', 'cuda', 'cuda:N'): parsed without torch, checked against this machine.

:func:`check_device` is the one start-up check every entry point runs (``load_engine``,
``abtest worker``, ``benchmarks.engines``) before anything touches the device, so a missing GPU
or a CPU-only torch build is reported in one sentence instead of failing inside a kernel.
Importing this module does not import torch (``engines.spec`` uses :func:`parse_device`).
"""

from __future__ import annotations

import os
import re

from engines.types import EngineError

__all__ = ["DeviceError", "check_device", "parse_device", "DEVICE_FORMAT"]

DEVICE_FORMAT = "'cpu', 'cuda' or 'cuda:N' (N = a GPU index, e.g. cuda:0)"
_DEVICE = re.compile(r"(cpu|cuda)(?::(\d+))?")


class DeviceError(EngineError):
    """A device string is malformed, or names a device this machine does not have."""

    code = "device_unavailable"


def parse_device(device: object) -> tuple[str, int | None]:
    """``'cuda:1'`` -> ``('cuda', 1)``; ``'cpu'`` -> ``('cpu', None)``. Torch-free.

    Raises :class:`DeviceError` for anything else ('gpu', 'cuda:x', 'cpu:0', '')."""
    m = _DEVICE.fullmatch(device) if isinstance(device, str) else None
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise DeviceError(f"invalid device {device!r}: expected {DEVICE_FORMAT}")
    return m.group(1), int(m.group(2)) if m.group(2) is not None else None


def check_device(device: str) -> None:
    """Raise :class:`DeviceError` unless ``device`` is well-formed and usable here.

    'cpu' never imports torch; a CUDA device imports it and checks, in order: that this torch
    build has CUDA support, that a GPU is visible, and that the index is below the GPU count.
    """
    kind, index = parse_device(device)
    if kind == "cpu":
        return
    import torch

    version = f"torch {torch.__version__}"
    if not torch.backends.cuda.is_built():
        raise DeviceError(
            f"device {device!r} is not available: this torch build has no CUDA support ({version}); "
            f"install a CUDA build of torch, or use device 'cpu'")
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        raise DeviceError(
            f"device {device!r} is not available: CUDA is not available: no GPU visible "
            f"({version}, CUDA {torch.version.cuda}{hint}); check the driver (nvidia-smi) and the "
            f"container's GPU reservation, or use device 'cpu'")
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        plural = "device is" if count == 1 else "devices are"
        raise DeviceError(
            f"device {device!r} is not available: cuda:{index} requested but only {count} CUDA {plural} "
            f"visible (cuda:0{'' if count == 1 else f'..cuda:{count - 1}'})")
