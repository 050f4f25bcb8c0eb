"""Inference engines: V1 FP32 dense decoder, V2 INT4 hybrid-attention decoder, dynamic batching.

``import engines`` and ``engines.spec`` / ``engines.types`` stay torch-free; the runtime names
(``load_engine``, ``Engine``, ``BatchingScheduler``) are imported lazily on first use.
"""

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
