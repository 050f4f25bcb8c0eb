"""Small, explicit validation of JSON payloads: every failure names its field.

A ``Fields`` reader walks one JSON object, reports unknown fields, and checks each value's
type and range. Errors are :class:`abtest.errors.ValidationError` (422) with the dotted path of
the offending field, e.g. ``variants[1].weight``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ValidationError

__all__ = ["Fields", "SLUG_RE"]

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
_MISSING = object()


class Fields:
    """Typed access to the fields of one JSON object at ``path``."""

    def __init__(self, data: Any, allowed: Iterable[str], path: str = "") -> None:
        if not isinstance(data, Mapping):
            raise ValidationError(path or "body", "must be a JSON object")
        self.data, self.path = data, path
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValidationError(self._name(unknown[0]), "unknown field")

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, default: Any) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise ValidationError(self._name(key), "is required")
            return default
        return value

    def str(self, key: str, default: Any = _MISSING, *, max_len: int = 200, slug: bool = False,
            nonempty: bool = True) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise ValidationError(self._name(key), "must be a string")
        if nonempty and not value.strip():
            raise ValidationError(self._name(key), "must not be empty")
        if len(value) > max_len:
            raise ValidationError(self._name(key), f"must be at most {max_len} characters")
        if slug and not SLUG_RE.match(value):
            raise ValidationError(
                self._name(key), "must be a slug: lowercase letters, digits, '-', '_' or '.'"
            )
        return value

    def num(self, key: str, default: Any = _MISSING, *, lo: float | None = None,
            hi: float | None = None, integer: bool = False) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValidationError(self._name(key), "must be an integer" if integer else "must be a number")
        if isinstance(value, int) and abs(value) > 2**63:  # JSON allows any size; floats would overflow
            raise ValidationError(self._name(key), "is out of range")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(self._name(key), "must be a finite number")
        if lo is not None and value < lo:
            raise ValidationError(self._name(key), f"must be >= {lo}")
        if hi is not None and value > hi:
            raise ValidationError(self._name(key), f"must be <= {hi}")
        return value

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ValidationError(self._name(key), "must be true or false")
        return value

    def list(self, key: str, default: Any = _MISSING, *, max_len: int = 1000) -> Any:
        value = self._get(key, default)
        if not isinstance(value, list):
            raise ValidationError(self._name(key), "must be a list")
        if len(value) > max_len:
            raise ValidationError(self._name(key), f"must have at most {max_len} items")
        return value

    def obj(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if not isinstance(value, Mapping):
            raise ValidationError(self._name(key), "must be a JSON object")
        return value

    def choice(self, key: str, choices: Iterable[str], default: Any = _MISSING) -> Any:
        options = list(choices)
        value = self._get(key, default)
        if value not in options:
            raise ValidationError(self._name(key), f"must be one of {', '.join(options)}")
        return value

    def child(self, key: str, index: int | None = None) -> str:
        name = self._name(key)
        return f"{name}[{index}]" if index is not None else name
