"""Tiny engines for the quality tests: the session's tiny checkpoints, plus their ``v2-fp32``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def quality_specs(tiny_registry):  # type: ignore[no-untyped-def]
    """The tiny v1-fp32, v2-fp32 and v2-int4 specs (built once, beside the tiny registry)."""
    pytest.importorskip("torch")
    from engines.testing import build_tiny_checkpoints

    return build_tiny_checkpoints(Path(tiny_registry).parent)


@pytest.fixture(scope="session")
def quality_registry(quality_specs, tiny_registry) -> str:  # type: ignore[no-untyped-def]
    """A registry of the three tiny engines and ``broken`` (a checkpoint that is not there)."""
    entries = [quality_specs[name].to_dict() for name in ("v1-fp32", "v2-int4", "v2-fp32")]
    entries.append({**quality_specs["v1-fp32"].to_dict(), "name": "broken",
                    "checkpoint": str(Path(tiny_registry).parent / "missing")})
    path = Path(tiny_registry).parent / "quality-registry.json"
    path.write_text(json.dumps({"engines": entries}))
    return str(path)


@pytest.fixture(scope="session")
def quality_engines(quality_specs):  # type: ignore[no-untyped-def]
    import torch

    from engines import load_engine

    torch.set_num_threads(1)
    engines = {name: load_engine(spec) for name, spec in quality_specs.items()}
    yield engines
    for e in engines.values():
        e.close()
