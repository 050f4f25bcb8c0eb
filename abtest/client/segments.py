"""A unit's segment levels: the one function the server and the SDK both use. Standard library only.

An experiment may declare ``dimensions`` (``[{"attribute": "country", "levels": ["US", "DE"]}]``):
unit attributes its report breaks every metric down by. A unit's level of a dimension is its
attribute's value when that value is one of the declared levels, else ``"other"`` (a missing
attribute too; numbers count by their text, booleans never match). Server-side assignments
and a locally evaluating client's exposures compute it with :func:`segment_levels`, so a unit
gets the same levels wherever it was evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["OTHER_LEVEL", "MAX_DIMENSIONS", "MAX_LEVELS", "MAX_LEVEL_LENGTH", "segment_levels"]

OTHER_LEVEL = "other"
MAX_DIMENSIONS = 5  # per experiment
MAX_LEVELS = 20  # named levels per dimension (every other value is OTHER_LEVEL)
MAX_LEVEL_LENGTH = 100


def segment_levels(dimensions: Sequence[Mapping[str, Any]] | None,
                   attributes: Mapping[str, Any] | None) -> dict[str, str] | None:
    """A unit's level per dimension: its attribute's value when declared, else "other"; None
    when the experiment declares no dimension."""
    if not dimensions:
        return None
    attributes = attributes or {}
    out = {}
    for d in dimensions:
        value = attributes.get(d["attribute"])
        value = value if isinstance(value, str) else (str(value) if isinstance(value, (int, float))
                                                      and not isinstance(value, bool) else None)
        out[d["attribute"]] = value if value in d["levels"] else OTHER_LEVEL
    return out
