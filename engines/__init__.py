"""Inference engines: V1 FP32 dense decoder, V2 INT4 hybrid-attention decoder, dynamic batching.

``import engines`` and ``engines.spec`` / ``engines.types`` stay torch-free; the runtime names
(``load_engine``, ``Engine``, ``BatchingScheduler``) are imported lazily on first use.
"""

import os as _os

from engines.device import DeviceError, check_device
from engines.spec import EngineSpec, builtin_specs, load_registry
from engines.types import (
    EngineClosed,
    EngineError,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    Overloaded,
    PromptTooLong,
)

_LAZY = {
    "load_engine": "engines.runtime",
    "Engine": "engines.runtime",
    "BatchingScheduler": "engines.scheduler",
    "ContinuousBatchingScheduler": "engines.continuous",
}

__all__ = [
    "tune_openmp",
    "EngineSpec",
    "builtin_specs",
    "load_registry",
    "check_device",
    "DeviceError",
    "GenerationRequest",
    "GenerationResult",
    "EngineError",
    "InvalidRequest",
    "PromptTooLong",
    "Overloaded",
    "EngineClosed",
    *_LAZY,
]


def tune_openmp() -> None:
    """Make OpenMP threads spin only briefly while they wait (``GOMP_SPINCOUNT``, unless set).

    Threads that spin long collapse throughput (10-20x measured here) when the cores are shared
    with other processes; never spinning (``OMP_WAIT_POLICY=PASSIVE``) costs ~2x in decode
    latency; a short spin keeps both. It only takes effect before torch is first imported, so
    the entry points call it first (``abtest``, ``python -m engines``, the benchmarks); importing
    ``engines`` changes nothing.
    """
    _os.environ.setdefault("GOMP_SPINCOUNT", "20000")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engines' has no attribute {name!r}")
