"""The report's quality section: how closely engines track each other on live prompts."""

from __future__ import annotations

from typing import Any

from .model import QualitySection

__all__ = ["quality_section"]


def quality_section(conn: Any, scope: Any, exp: Any) -> QualitySection | None:
    """None until scoring results exist for the experiment (see abtest.services.quality)."""
    return None
