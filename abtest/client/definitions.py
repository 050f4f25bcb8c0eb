"""The definitions document: every experiment's assignment config, as JSON, both ways.

``GET /v1/sdk/definitions`` serves :func:`document` of the server's configs; a locally
evaluating client reads it back with :func:`parse`, which validates the whole document and
raises :class:`DefinitionsError` naming the first bad field, so a bad payload is refused
whole (the client keeps the definitions it had). Both directions live here, next to the
evaluator, so what the server writes is what the client reads::

    {"version": "<sha256 of the experiments>", "experiments": [
        {"id": 3, "key": "checkout", "status": "running", "salt": "9f..", "phase": 2,
         "coverage": 1.0, "layer": null, "layer_start": 0.0, "layer_end": 1.0,
         "treatment_paused": false, "sticky": true,
         "variants": [{"key": "control", "engine": "v1", "weight": 0.5, "control": true,
                       "shadow": false}, ...],
         "targeting": [{"attribute": "country", "op": "in", "value": ["US"]}],
         "forced": {"qa-1": "treatment"},
         "dimensions": [{"attribute": "country", "levels": ["US", "DE"]}]}],
     "layers": {"homepage": {"holdout": 0.05}}}

``dimensions`` (the segment attributes, see :mod:`abtest.client.segments`) may be absent (a
document of an older server): none.

``layers`` holds each layer's holdout share, one number per layer (only layers whose share is
above 0 are listed); an experiment of a listed layer keeps those units on its control (see
:mod:`abtest.client.evaluation`). The ``version`` covers the experiments and the layers, so a
holdout change is a change of definitions.

Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .evaluation import TARGETING_OPERATORS, ExperimentConfig, VariantConfig
from .segments import MAX_DIMENSIONS, MAX_LEVEL_LENGTH, MAX_LEVELS, OTHER_LEVEL

__all__ = ["DefinitionsError", "experiment_dict", "layers_dict", "document", "parse", "MAX_HOLDOUT"]


class DefinitionsError(ValueError):
    """A definitions document that cannot be used; ``field`` is where it went wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def experiment_dict(c: ExperimentConfig) -> dict[str, Any]:
    return {
        "id": c.id, "key": c.key, "status": c.status, "salt": c.salt, "phase": c.phase,
        "coverage": c.coverage, "layer": c.layer, "layer_start": c.layer_start, "layer_end": c.layer_end,
        "treatment_paused": c.treatment_paused, "sticky": c.sticky,
        "variants": [{"key": v.key, "engine": v.engine, "weight": v.weight, "control": v.is_control,
                      "shadow": v.shadow} for v in c.variants],
        "targeting": [dict(r) for r in c.targeting], "forced": dict(c.forced),
        "dimensions": [{"attribute": d["attribute"], "levels": list(d["levels"])} for d in c.dimensions],
    }


def layers_dict(configs: Iterable[ExperimentConfig]) -> dict[str, dict[str, float]]:
    """Each layer's holdout share (layers with a share above 0), from the configs of its
    experiments; ValueError if two experiments of one layer disagree."""
    layers: dict[str, dict[str, float]] = {}
    for c in configs:
        if c.layer is None or c.holdout <= 0.0:
            continue
        if layers.setdefault(c.layer, {"holdout": c.holdout})["holdout"] != c.holdout:
            raise ValueError(f"experiments of layer {c.layer!r} disagree on its holdout share")
    return {name: layers[name] for name in sorted(layers)}


def document(configs: Iterable[ExperimentConfig]) -> dict[str, Any]:
    """The document of ``configs`` (sorted by key); ``version`` changes exactly when they do."""
    ordered = sorted(configs, key=lambda c: c.key)
    experiments = [experiment_dict(c) for c in ordered]
    layers = layers_dict(ordered)
    # Without holdouts the version is that of the experiments alone (as it always was).
    hashed: Any = {"experiments": experiments, "layers": layers} if layers else experiments
    canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return {"version": hashlib.sha256(canonical.encode()).hexdigest(), "experiments": experiments,
            "layers": layers}


# --- reading it back ---------------------------------------------------------------------

def _get(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in obj:
        raise DefinitionsError(f"{where}.{name}", "is missing")
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kinds):
        raise DefinitionsError(f"{where}.{name}", f"must be {_name(kind)}, got {type(value).__name__}")
    return value


def _name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({str: "a string", bool: "a boolean", int: "an integer", float: "a number",
                        list: "a list", dict: "an object", type(None): "null"}.get(k, k.__name__) for k in kinds)


def _fraction(obj: Mapping[str, Any], name: str, where: str) -> float:
    value = float(_get(obj, name, (int, float), where))
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise DefinitionsError(f"{where}.{name}", f"must be in [0, 1], got {value!r}")
    return value


def _variant(raw: Any, where: str) -> VariantConfig:
    if not isinstance(raw, dict):
        raise DefinitionsError(where, "must be an object")
    weight = float(_get(raw, "weight", (int, float), where))
    if not (math.isfinite(weight) and weight >= 0):
        raise DefinitionsError(f"{where}.weight", f"must be a finite number >= 0, got {weight!r}")
    return VariantConfig(_get(raw, "key", str, where), _get(raw, "engine", str, where), weight,
                         _get(raw, "control", bool, where), _get(raw, "shadow", bool, where))


def _rule(raw: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise DefinitionsError(where, "must be an object")
    op = _get(raw, "op", str, where)
    if op not in TARGETING_OPERATORS:
        raise DefinitionsError(f"{where}.op", f"must be one of {sorted(TARGETING_OPERATORS)}, got {op!r}")
    _get(raw, "attribute", str, where)
    if "value" not in raw:
        raise DefinitionsError(f"{where}.value", "is missing")
    if op in ("in", "not_in") and not isinstance(raw["value"], list):
        raise DefinitionsError(f"{where}.value", f"must be a list for {op!r}")
    return {"attribute": raw["attribute"], "op": op, "value": raw["value"]}


def _dimensions(raw: Mapping[str, Any], where: str) -> tuple[Mapping[str, Any], ...]:
    """Up to MAX_DIMENSIONS distinct attributes, each with 1 to MAX_LEVELS distinct levels."""
    items = _get(raw, "dimensions", list, where) if "dimensions" in raw else []
    if len(items) > MAX_DIMENSIONS:
        raise DefinitionsError(f"{where}.dimensions", f"at most {MAX_DIMENSIONS} dimensions, got {len(items)}")
    out, seen = [], set()
    for i, item in enumerate(items):
        path = f"{where}.dimensions[{i}]"
        if not isinstance(item, dict):
            raise DefinitionsError(path, "must be an object")
        attribute, levels = _get(item, "attribute", str, path), _get(item, "levels", list, path)
        if attribute in seen:
            raise DefinitionsError(f"{path}.attribute", f"appears twice: {attribute!r}")
        seen.add(attribute)
        if not 1 <= len(levels) <= MAX_LEVELS or len(set(map(str, levels))) != len(levels):
            raise DefinitionsError(f"{path}.levels", f"must be 1 to {MAX_LEVELS} distinct levels")
        if not all(isinstance(v, str) and 0 < len(v) <= MAX_LEVEL_LENGTH and v != OTHER_LEVEL for v in levels):
            raise DefinitionsError(f"{path}.levels", f"must be non-empty strings of at most {MAX_LEVEL_LENGTH} "
                                   f"characters other than {OTHER_LEVEL!r}")
        out.append({"attribute": attribute, "levels": list(levels)})
    return tuple(out)




MAX_HOLDOUT = 0.5


def _layers(raw: Any) -> dict[str, float]:
    """The ``layers`` object: layer name -> holdout share in [0, 0.5] (absent: no holdouts)."""
    if not isinstance(raw, dict):
        raise DefinitionsError("definitions.layers", "must be an object")
    shares: dict[str, float] = {}
    for name, entry in raw.items():
        where = f"layers[{name!r}]"
        if not isinstance(entry, dict):
            raise DefinitionsError(where, "must be an object")
        share = float(_get(entry, "holdout", (int, float), where))
        if not (math.isfinite(share) and 0.0 <= share <= MAX_HOLDOUT):
            raise DefinitionsError(f"{where}.holdout", f"must be in [0, {MAX_HOLDOUT}], got {share!r}")
        shares[name] = share
    return shares


def _experiment(raw: Any, where: str, holdouts: Mapping[str, float]) -> ExperimentConfig:
    if not isinstance(raw, dict):
        raise DefinitionsError(where, "must be an object")
    variants = tuple(_variant(v, f"{where}.variants[{i}]")
                     for i, v in enumerate(_get(raw, "variants", list, where)))
    if sum(v.is_control for v in variants) != 1:
        raise DefinitionsError(f"{where}.variants", "must have exactly one control")
    if sum(v.weight for v in variants) <= 0:
        raise DefinitionsError(f"{where}.variants", "weights must not all be 0")
    keys = {v.key for v in variants}
    forced = _get(raw, "forced", dict, where)
    for unit, variant in forced.items():
        if variant not in keys:
            raise DefinitionsError(f"{where}.forced[{unit!r}]", f"names no variant: {variant!r}")
    phase = _get(raw, "phase", int, where)
    if phase < 1:
        raise DefinitionsError(f"{where}.phase", f"must be >= 1, got {phase}")
    layer = _get(raw, "layer", (str, type(None)), where)
    start, end = _fraction(raw, "layer_start", where), _fraction(raw, "layer_end", where)
    if start > end:
        raise DefinitionsError(f"{where}.layer_end", "must not be below layer_start")
    return ExperimentConfig(
        id=_get(raw, "id", int, where), key=_get(raw, "key", str, where), status=_get(raw, "status", str, where),
        salt=_get(raw, "salt", str, where), phase=phase, coverage=_fraction(raw, "coverage", where),
        variants=variants,
        targeting=tuple(_rule(r, f"{where}.targeting[{i}]") for i, r in enumerate(_get(raw, "targeting", list, where))),
        forced=dict(forced), layer=layer, layer_start=start, layer_end=end,
        treatment_paused=_get(raw, "treatment_paused", bool, where), sticky=_get(raw, "sticky", bool, where),
        dimensions=_dimensions(raw, where),
        holdout=holdouts.get(layer, 0.0) if layer is not None else 0.0,
    )


def parse(doc: Any) -> tuple[str, dict[str, ExperimentConfig]]:
    """(version, configs by key) of a definitions document; :class:`DefinitionsError` if any
    part of it is invalid (nothing of it is used then)."""
    if not isinstance(doc, dict):
        raise DefinitionsError("definitions", "must be a JSON object")
    version = _get(doc, "version", str, "definitions")
    holdouts = _layers(doc.get("layers", {}))
    configs: dict[str, ExperimentConfig] = {}
    for i, raw in enumerate(_get(doc, "experiments", list, "definitions")):
        config = _experiment(raw, f"experiments[{i}]", holdouts)
        if config.key in configs:
            raise DefinitionsError(f"experiments[{i}].key", f"appears twice: {config.key!r}")
        configs[config.key] = config
    return version, configs
