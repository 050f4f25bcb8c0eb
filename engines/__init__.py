"""Inference engines: V1 FP32 dense decoder, V2 INT4 hybrid-attention decoder, dynamic batching.

``import engines`` and ``engines.spec`` / ``engines.types`` stay torch-free; the runtime names
(``load_engine``, ``Engine``, ``BatchingScheduler``) are imported lazily on first use.
"""

import os as _os

# OpenMP threads that spin while waiting collapse throughput (20x measured here) when the
# 2 cores are shared with other processes; sleeping waits cost little. Only effective when
# torch has not been imported yet (e.g. `python -m engines`, the benchmark, a fresh worker).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
