"""The pure assignment evaluator: which variant a unit gets. Standard library only.

The one implementation of assignment: the server (``abtest.evaluator`` re-exports it) and the
SDK's local evaluation (``Client(..., evaluation="local")``) both call :func:`assign`, so a
unit gets the same variant wherever it is evaluated.

Hashing
    Every decision uses ``bucket(namespace, unit_id)``: the first 8 bytes of
    SHA-256(``namespace + "\\x1f" + unit_id``) as a big-endian integer divided by 2**64,
    a float in [0, 1). SHA-256 is the same on every process, machine and Python version
    (unlike ``hash()``), and its output is uniform, so buckets are fair.

Three independent hashes per experiment (salt ``s``, phase ``p``):
    ``layer:<layer>``     position inside a mutual-exclusion layer; an experiment owns the
                          half-open range [layer_start, layer_end) of it, and experiments of
                          one layer have disjoint ranges, so they never share a unit.
    ``<s>:coverage``      the unit is enrolled when this bucket < coverage. Raising coverage
                          only adds units; it never moves an enrolled unit (the variant hash
                          is independent of it).
    ``<s>:<p>:variant``   picks the variant by cumulative weight, in variant order.

Layer holdouts (``holdout`` on the experiment: its layer's holdout share, one number per layer):
    ``holdout:<layer>``   a unit whose bucket here is below the share is in the layer's holdout:
                          every experiment of the layer that would enrol it (its targeting,
                          layer range and coverage pass) answers it the control with reason
                          ``holdout``, not enrolled. The hash depends only on the layer's name,
                          so the holdout is the same units across all the layer's experiments
                          and independent of their positions, coverage and variant hashes.
                          A sticky unit in the holdout gets the control too.

A weight change on a started experiment opens a new phase, which re-randomizes units with a
fresh variant hash; results are analysed per phase, so allocations are never mixed.

Sticky bucketing (``sticky=True`` on the experiment): the caller passes the variant stored for
the unit (``sticky=``, read from a :class:`abtest.client.sticky.StickyStore`); a unit that still
passes targeting keeps it across phases (reason ``sticky``; coverage and layer are not asked
again, like GrowthBook's sticky buckets), and a unit without one is hashed under the current
weights (reason ``assigned``; :func:`should_store` says to save it).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "VariantConfig",
    "ExperimentConfig",
    "Assignment",
    "bucket",
    "assign",
    "should_store",
    "in_holdout",
    "matches_targeting",
    "TARGETING_OPERATORS",
]

_SEP = "\x1f"
_SCALE = float(2**64)


def bucket(namespace: str, unit_id: str) -> float:
    """Uniform, deterministic position of ``unit_id`` in [0, 1) for ``namespace``."""
    return _position(f"{namespace}{_SEP}".encode(), unit_id)


def _position(prefix: bytes, unit_id: str) -> float:
    """``bucket`` with the namespace and separator already encoded (the hot path)."""
    return int.from_bytes(_sha256(prefix + unit_id.encode()).digest()[:8], "big") / _SCALE


_sha256 = hashlib.sha256


@dataclass(frozen=True)
class VariantConfig:
    key: str
    engine: str
    weight: float
    is_control: bool = False
    shadow: bool = False
    quality_reference: str | None = None  # an engine that scores this variant's completions


@dataclass(frozen=True)
class ExperimentConfig:
    """What assignment needs to know about an experiment (a snapshot; cacheable)."""

    id: int
    key: str
    status: str
    salt: str
    phase: int
    coverage: float
    variants: tuple[VariantConfig, ...]
    targeting: tuple[Mapping[str, Any], ...] = ()
    forced: Mapping[str, str] = field(default_factory=dict)
    layer: str | None = None
    layer_start: float = 0.0
    layer_end: float = 1.0
    treatment_paused: bool = False
    quality_sample: float | None = None  # share of served requests scored for output quality
    dimensions: tuple[Mapping[str, Any], ...] = ()  # segment dimensions: {"attribute", "levels"}
    sticky: bool = False  # units keep their variant across weight changes (see the module doc)
    holdout: float = 0.0  # the layer's holdout share in [0, 0.5] (only with a layer; see the module doc)

    # Derived once per snapshot (the hot path reads these, never recomputes them).
    _control: VariantConfig | None = field(default=None, init=False, repr=False, compare=False)
    _by_key: Mapping[str, VariantConfig] = field(default_factory=dict, init=False, repr=False, compare=False)
    _cumulative: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)
    _prefixes: tuple[bytes, ...] = field(default=(), init=False, repr=False, compare=False)
    _memo: dict[tuple[str | None, str], "Assignment"] = field(default_factory=dict, init=False, repr=False,
                                                               compare=False)

    def __post_init__(self) -> None:
        total, running, cumulative = sum(v.weight for v in self.variants), 0.0, []
        for v in self.variants:
            running += v.weight / total if total else 0.0
            cumulative.append(running)
        derived = {
            "_control": next((v for v in self.variants if v.is_control), None),
            "_by_key": {v.key: v for v in reversed(self.variants)},  # the first of a key wins, as next() did
            "_cumulative": tuple(cumulative),
            "_prefixes": tuple(f"{ns}{_SEP}".encode() for ns in (
                f"layer:{self.layer}", f"{self.salt}:coverage", f"{self.salt}:{self.phase}:variant",
                f"holdout:{self.layer}")),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def control(self) -> VariantConfig:
        if self._control is None:
            raise StopIteration  # as before: an experiment without a control cannot assign
        return self._control

    def variant(self, key: str) -> VariantConfig:
        try:
            return self._by_key[key]
        except KeyError:
            raise StopIteration from None


@dataclass(frozen=True)
class Assignment:
    experiment: str
    variant: str
    engine: str
    in_experiment: bool
    # assigned | sticky | forced | not_running | targeting | layer | coverage | holdout | treatment_paused
    reason: str
    shadow_engine: str | None = None  # set when the variant is a shadow: run a copy there


def assign(
    exp: ExperimentConfig, unit_id: str, attributes: Mapping[str, Any] | None = None,
    sticky: str | None = None,
) -> Assignment:
    """Decide which variant serves ``unit_id``. Units left out get the control, not enrolled.

    ``sticky``: the variant stored for this unit (used only when ``exp.sticky`` and it is still
    one of the experiment's variants)."""
    control = exp.control
    if exp.status != "running":
        return _out(exp, control, "not_running")
    if exp.forced and unit_id in exp.forced:
        # QA allow-list: the unit sees its forced variant, but is left out of the analysis.
        forced = exp.variant(exp.forced[unit_id])
        return Assignment(exp.key, forced.key, forced.engine, False, "forced")
    if exp.targeting and not matches_targeting(exp.targeting, attributes or {}):
        return _out(exp, control, "targeting")
    layer_ns, coverage_ns, variant_ns, holdout_ns = exp._prefixes
    held = exp.holdout > 0.0 and exp.layer is not None and _position(holdout_ns, unit_id) < exp.holdout
    if sticky is not None and exp.sticky and sticky in exp._by_key:
        return _out(exp, control, "holdout") if held else _served(exp, exp._by_key[sticky], "sticky")
    if exp.layer is not None:
        pos = _position(layer_ns, unit_id)
        if not exp.layer_start <= pos < exp.layer_end:
            return _out(exp, control, "layer")
    if exp.coverage < 1.0 and _position(coverage_ns, unit_id) >= exp.coverage:
        return _out(exp, control, "coverage")
    if held:
        return _out(exp, control, "holdout")
    chosen = _pick_cumulative(exp, _position(variant_ns, unit_id))
    return _served(exp, chosen, "assigned")


def in_holdout(result: Assignment) -> bool:
    """Whether ``result`` keeps the unit in its layer's holdout (a holdout exposure to record)."""
    return result.reason == "holdout"


def should_store(exp: ExperimentConfig, result: Assignment) -> bool:
    """Whether ``result`` is a fresh hash assignment of a sticky experiment, to be stored."""
    return exp.sticky and result.reason == "assigned"


def _pick_cumulative(exp: ExperimentConfig, position: float) -> VariantConfig:
    """The variant whose cumulative share (weights in variant order, precomputed) first exceeds ``position``."""
    for v, cumulative in zip(exp.variants, exp._cumulative):
        if position < cumulative:
            return v
    return exp.variants[-1]  # float rounding at the very top of [0, 1)


def _out(exp: ExperimentConfig, control: VariantConfig, reason: str) -> Assignment:
    found = exp._memo.get((None, reason))
    if found is None:  # answers are immutable and few per snapshot: built once each
        found = exp._memo[(None, reason)] = Assignment(exp.key, control.key, control.engine, False, reason)
    return found


def _served(exp: ExperimentConfig, chosen: VariantConfig, reason: str) -> Assignment:
    found = exp._memo.get((chosen.key, reason))
    if found is None:
        found = exp._memo[(chosen.key, reason)] = _serve(exp, chosen, reason)
    return found


def _serve(exp: ExperimentConfig, chosen: VariantConfig, reason: str) -> Assignment:
    control = exp._control
    assert control is not None
    if chosen.shadow:
        # Shadow variants are dark launches: the control serves, the shadow engine gets a copy.
        return Assignment(exp.key, chosen.key, control.engine, True, reason, chosen.engine)
    if exp.treatment_paused and not chosen.is_control:
        return Assignment(exp.key, control.key, control.engine, False, "treatment_paused")
    return Assignment(exp.key, chosen.key, chosen.engine, True, reason)


# --- targeting ---------------------------------------------------------------------------

def _num(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, str)):
        raise TypeError
    return float(x)


def _semver(x: Any) -> tuple[int, ...]:
    m = re.fullmatch(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(x).strip())
    if not m:
        raise TypeError
    return tuple(int(g or 0) for g in m.groups())


def _compare(convert, op):  # type: ignore[no-untyped-def]
    def check(actual: Any, expected: Any) -> bool:
        try:
            return bool(op(convert(actual), convert(expected)))
        except (TypeError, ValueError):
            return False

    return check


_ORDER = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}

TARGETING_OPERATORS: dict[str, Any] = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
    **{name: _compare(_num, fn) for name, fn in _ORDER.items()},
    **{f"semver_{name}": _compare(_semver, fn) for name, fn in _ORDER.items()},
    "semver_eq": _compare(_semver, lambda a, b: a == b),
}


def matches_targeting(rules: Sequence[Mapping[str, Any]], attributes: Mapping[str, Any]) -> bool:
    """All rules must hold. A rule on a missing attribute fails (except ``neq``/``not_in``)."""
    for rule in rules:
        op, name = rule["op"], rule["attribute"]
        if name not in attributes:
            if op in ("neq", "not_in"):
                continue
            return False
        if not TARGETING_OPERATORS[op](attributes[name], rule["value"]):
            return False
    return True
