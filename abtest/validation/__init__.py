"""Small, explicit validation of JSON payloads: every failure names its field.

A ``Fields`` reader walks one JSON object, reports unknown fields, and checks each value's
type and range. Errors are :class:`abtest.errors.ValidationError` (422) with the dotted path of
the offending field, e.g. ``variants[1].weight``.

Every string the service stores must be text a database column can hold (:func:`storable`): no
NUL character (PostgreSQL refuses it in text and JSON alike) and no lone UTF-16 surrogate
(``"\\ud800"`` is valid JSON but not encodable as UTF-8). ``Fields.str`` checks that for named
fields; :func:`check_json` checks free-form values (attributes, targeting values, forced units).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ValidationError

__all__ = ["Fields", "SLUG_RE", "TEXT_ERROR", "KEY_ERROR", "storable", "check_json"]

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
TEXT_ERROR = "must be valid Unicode text without NUL characters or lone surrogates"
KEY_ERROR = "field names " + TEXT_ERROR
MAX_INT = 2**63  # larger integers overflow floats (targeting comparisons) and 64-bit columns
_MISSING = object()


def storable(value: str) -> bool:
    """False for text no database column can hold: NUL characters, lone surrogates."""
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_json(value: Any, path: str, *, max_len: int | None = None) -> None:
    """Check a free-form JSON value; :class:`ValidationError` at the first bad place.

    Every string, object keys included, must be :func:`storable` (and, with ``max_len``, at
    most that long); every number finite and within +/-2**63. The path names the place, e.g.
    ``attributes.tags[1]``; a bad key names the object holding it. Iterative: no recursion,
    however deep ``value`` is (the API's :func:`~abtest.api.common.json_body` caps depth too).
    """
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        kind = type(item)
        if kind is str:
            if not storable(item):
                raise ValidationError(where, TEXT_ERROR)
            if max_len is not None and len(item) > max_len:
                raise ValidationError(where, f"must be at most {max_len} characters")
        elif kind is float:
            if not math.isfinite(item):
                raise ValidationError(where, "must be a finite number")
        elif kind is int:
            if abs(item) > MAX_INT:
                raise ValidationError(where, "is out of range")
        elif isinstance(item, Mapping):
            children = []
            for key, child in item.items():
                if not isinstance(key, str) or not storable(key):
                    raise ValidationError(where, "keys " + TEXT_ERROR)
                if max_len is not None and len(key) > max_len:
                    raise ValidationError(where, f"keys must be at most {max_len} characters")
                children.append((f"{where}.{key}", child))
            stack.extend(reversed(children))  # report the first bad place in document order
        elif kind is list:
            stack.extend(reversed([(f"{where}[{i}]", child) for i, child in enumerate(item)]))


class Fields:
    """Typed access to the fields of one JSON object at ``path``."""

    def __init__(self, data: Any, allowed: Iterable[str], path: str = "") -> None:
        if not isinstance(data, Mapping):
            raise ValidationError(path or "body", "must be a JSON object")
        self.data, self.path = data, path
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            if not all(storable(key) for key in unknown):  # never echo such a name as a path
                raise ValidationError(path or "body", KEY_ERROR)
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
        if not storable(value):
            raise ValidationError(self._name(key), TEXT_ERROR)
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
