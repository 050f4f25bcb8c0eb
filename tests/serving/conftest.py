"""Serving fixtures: tiny random engines built once per session, and an engine registry file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A registry JSON naming tiny ``v1-fp32``/``v2-int4`` engines, plus ``broken`` (bad checkpoint)."""
    from engines.testing import build_tiny_checkpoints

    root = tmp_path_factory.mktemp("tiny-engines")
    specs = build_tiny_checkpoints(root)
    entries = [specs[name].to_dict() for name in ("v1-fp32", "v2-int4")]
    entries.append({**specs["v1-fp32"].to_dict(), "name": "broken", "checkpoint": str(root / "missing")})
    path = Path(root) / "registry.json"
    path.write_text(json.dumps({"engines": entries}))
    return str(path)
