"""Inference engines: V1 FP32 dense decoder, V2 INT4 hybrid-attention decoder, dynamic batching.

``import engines`` and ``engines.spec`` / ``engines.types`` stay torch-free; the runtime names
(``load_engine``, ``Engine``, ``BatchingScheduler``) are imported lazily on first use.
"""

import os as _os

# OpenMP threads that spin long while waiting collapse throughput (10-20x measured here) when
# the 2 cores are shared with other processes; never spinning (OMP_WAIT_POLICY=PASSIVE) costs
# ~2x in decode latency. A short spin keeps both. Only effective when torch has not been
# imported yet (`python -m engines`, the benchmark, a fresh worker process).
_os.environ.setdefault("GOMP_SPINCOUNT", "20000")

from engines.device import DeviceError, check_device  # noqa: E402
from engines.spec import EngineSpec, builtin_specs, load_registry  # noqa: E402
from engines.types import (  # noqa: E402
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


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engines' has no attribute {name!r}")
