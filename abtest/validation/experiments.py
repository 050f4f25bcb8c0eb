"""Parse and validate experiment payloads into plain values (no database access).

Payload (POST /v1/experiments; PATCH takes the mutable subset)::

    {"key": "v2-vs-v1", "name": "V2 INT4 vs V1 FP32", "hypothesis": "...", "owner": "...",
     "coverage": 1.0,
     "variants": [{"key": "control", "engine": "v1-fp32", "weight": 0.5, "control": true},
                  {"key": "treatment", "engine": "v2-int4", "weight": 0.5, "shadow": false}],
     "targeting": [{"attribute": "country", "op": "in", "value": ["US", "CA"]}],
     "forced": {"qa-user-1": "treatment"},
     "layer": "homepage", "layer_share": 0.5,
     "decision": "non_inferiority", "quality_sample": 0.05, "sticky": true,
     "metrics": [{"name": "conversion", "event": "purchase", "kind": "binary",
                  "role": "primary", "direction": "increase", "attribution_window_hours": 24,
                  "margin": 0.02}]}

Decision policies and margins (relative: 0.02 = "at most 2 % worse"):

* ``"decision": "superiority"`` (default): the treatment ships when the primary metric improves.
  The primary metric takes no margin.
* ``"decision": "non_inferiority"``: the treatment ships when the primary metric is shown to be
  no worse than its ``margin``, which is required and > 0.
* A guardrail may have a margin (harm tolerated; 0 = any confident harm breaches). With
  ``"test": "equivalence"`` (two one-sided tests) it must show the difference lies within
  +/- margin, which then must be > 0.
* Secondary metrics are descriptive and take no margin.

Metric kinds: built-ins (no event), ``binary`` / ``count`` / ``sum`` of an event, and
``cost_per_event`` (the unit's cost of inference over its number of ``event`` events).

Sticky bucketing: ``"sticky": true`` keeps each enrolled unit's variant when a weight change
opens a new phase (new units follow the new weights); see :mod:`abtest.client.evaluation`.

Quality sampling: ``quality_sample`` in (0, 1] is the share of served requests whose
completions are scored off the request path; a variant's ``quality_reference`` names a
registered engine (not its own) that scores that variant's completions, and its
``quality_min_agreement`` in [0, 1] is a guardrail: the least top-1 agreement with the
reference that may ship (breached when the agreement's CI lies below it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..client.segments import MAX_DIMENSIONS, MAX_LEVEL_LENGTH, MAX_LEVELS, OTHER_LEVEL, segment_levels
from ..evaluator import TARGETING_OPERATORS
from ..errors import ValidationError
from ..reports.catalogue import builtin_directions
from . import Fields, check_json

__all__ = [
    "BUILTIN_METRICS",
    "DEFAULT_GUARDRAILS",
    "CREATE_FIELDS",
    "MUTABLE_FIELDS",
    "IMMUTABLE_FIELDS",
    "parse_variants",
    "parse_metrics",
    "parse_targeting",
    "parse_forced",
    "parse_policy",
    "parse_cuped",
    "parse_dimensions",
    "segment_levels",
    "UNIT_ATTRIBUTES",
    "DECISIONS",
    "METRIC_KINDS",
]

# Built-in metrics computed from the request log (defined in abtest.reports.catalogue): name ->
# direction, what counts as better.
BUILTIN_METRICS: dict[str, str] = builtin_directions()
DEFAULT_GUARDRAILS = ("error_rate", "latency_p99_ms")
MUTABLE_FIELDS = ("name", "hypothesis", "owner", "coverage", "variants", "targeting", "forced", "metrics",
                  "decision", "quality_sample", "cuped", "dimensions", "sticky", "ramp", "start_at", "stop_at",
                  "treatment_paused")
DECISIONS = ("superiority", "non_inferiority")
METRIC_KINDS = ("binary", "count", "sum", "cost_per_event")
CREATE_FIELDS = ("key", "layer", "layer_share", *MUTABLE_FIELDS[:-1])
IMMUTABLE_FIELDS = ("key", "layer", "layer_share")  # set once, at creation
WEIGHT_TOLERANCE = 1e-6
# Stored in JSON columns, which have no width of their own: the longest string a targeting
# value may hold, and the longest forced unit id (that of POST /v1/assign's unit_id, so that
# a longer one, which could never match, is refused rather than stored).
MAX_TARGETING_TEXT = 200
MAX_UNIT_ID = 200
# Segments: the unit attributes a dimension may break results down by (besides those the
# experiment targets on), at most MAX_DIMENSIONS of them with at most MAX_LEVELS named levels
# each (every other value counts as "other"; abtest.client.segments, shared with the SDK), and
# the longest CUPED lookback.
UNIT_ATTRIBUTES = ("country", "region", "language", "device", "platform", "os", "browser", "app_version",
                   "plan", "tier", "channel", "cohort")
MAX_LOOKBACK_DAYS = 365
DEFAULT_LOOKBACK_DAYS = 14


def parse_variants(raw: Any, is_engine: Callable[[str], bool]) -> list[dict[str, Any]]:
    f = Fields({"variants": raw}, ["variants"])
    items = f.list("variants", max_len=20)
    if len(items) < 2:
        raise ValidationError("variants", "an experiment needs at least two variants")
    variants, seen = [], set()
    for i, item in enumerate(items):
        path = f"variants[{i}]"
        v = Fields(item, ["key", "engine", "weight", "control", "shadow", "quality_reference",
                          "quality_min_agreement"], path)
        key = v.str("key", slug=True, max_len=100)
        if key in seen:
            raise ValidationError(f"{path}.key", f"duplicate variant key {key!r}")
        seen.add(key)
        engine = v.str("engine", max_len=100)
        if not is_engine(engine):
            raise ValidationError(f"{path}.engine", f"unknown engine {engine!r}")
        reference = v.str("quality_reference", None, max_len=100) if v.has("quality_reference") else None
        if reference is not None and not is_engine(reference):
            raise ValidationError(f"{path}.quality_reference", f"unknown engine {reference!r}")
        if reference is not None and reference == engine:
            raise ValidationError(f"{path}.quality_reference",
                                  f"is the variant's own engine {engine!r}: a reference must be another engine")
        floor = None
        if v.has("quality_min_agreement") and v._get("quality_min_agreement", None) is not None:
            if reference is None:
                raise ValidationError(f"{path}.quality_min_agreement", "needs a quality_reference to agree with")
            floor = float(v.num("quality_min_agreement", lo=0.0, hi=1.0))
        variants.append({
            "key": key, "engine": engine,
            "weight": float(v.num("weight", lo=0.0, hi=1.0)),
            "is_control": v.bool("control", False), "shadow": v.bool("shadow", False),
            "quality_reference": reference, "quality_min_agreement": floor,
        })
    _check_roles(variants)
    total = sum(v["weight"] for v in variants)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ValidationError("variants", f"weights must sum to 1 (they sum to {total:.6g})")
    return variants


def _check_roles(variants: list[dict[str, Any]]) -> None:
    controls = [i for i, v in enumerate(variants) if v["is_control"]]
    if len(controls) > 1:
        raise ValidationError(f"variants[{controls[1]}].control", "only one variant can be the control")
    if not controls:
        variants[0]["is_control"] = True  # the first variant is the control by default
    for i, v in enumerate(variants):
        if v["is_control"] and v["shadow"]:
            raise ValidationError(f"variants[{i}].shadow", "the control cannot be a shadow")


def parse_metrics(raw: Any) -> list[dict[str, Any]]:
    items = Fields({"metrics": raw}, ["metrics"]).list("metrics", max_len=50)
    metrics, seen = [], set()
    for i, item in enumerate(items):
        path = f"metrics[{i}]"
        m = Fields(item, ["name", "event", "kind", "role", "direction",
                          "attribution_window_hours", "margin", "test"], path)
        name = m.str("name", slug=True, max_len=100)
        if name in seen:
            raise ValidationError(f"{path}.name", f"duplicate metric {name!r}")
        seen.add(name)
        builtin = name in BUILTIN_METRICS
        if builtin and m.has("event"):
            raise ValidationError(f"{path}.event", f"{name!r} is a built-in metric and takes no event")
        kind = "builtin" if builtin else m.choice("kind", list(METRIC_KINDS), "binary")
        metrics.append({
            "name": name,
            "event_name": None if builtin else m.str("event", max_len=100),  # cost_per_event too
            "kind": kind,
            "role": m.choice("role", ["primary", "secondary", "guardrail"], "secondary"),
            "direction": m.choice("direction", ["increase", "decrease"],
                                  BUILTIN_METRICS.get(name, "decrease" if kind == "cost_per_event" else "increase")),
            "attribution_window_s": int(round(m.num("attribution_window_hours", 24, lo=0.0, hi=24 * 365) * 3600)),
            "margin": float(m.num("margin", 0.0, lo=0.0, hi=10.0)),
            "test": m.choice("test", ["equivalence"]) if m.has("test") else None,
        })
    if sum(m["role"] == "primary" for m in metrics) > 1:
        raise ValidationError("metrics", "at most one metric can be primary")
    if not any(m["role"] == "guardrail" for m in metrics):
        taken = {m["name"] for m in metrics}
        metrics += [_default_guardrail(name) for name in DEFAULT_GUARDRAILS if name not in taken]
    return metrics


def _default_guardrail(name: str) -> dict[str, Any]:
    return {"name": name, "event_name": None, "kind": "builtin", "role": "guardrail",
            "direction": BUILTIN_METRICS[name], "attribution_window_s": 86_400, "margin": 0.0, "test": None}


def parse_policy(decision: str, metrics: list[dict[str, Any]], quality_sample: float | None,
                 variants: list[dict[str, Any]]) -> None:
    """Cross-field rules of the decision policy, margins and quality sampling (422 naming the field).

    ``metrics`` and ``variants`` are parsed (:func:`parse_metrics`, :func:`parse_variants`, or the
    stored rows as dicts) and keep their payload order, so ``metrics[i]`` names the payload's.
    """
    primary = next((i for i, m in enumerate(metrics) if m["role"] == "primary"), None)
    for i, m in enumerate(metrics):
        path = f"metrics[{i}]"
        if m["role"] == "secondary" and m["margin"] > 0:
            raise ValidationError(f"{path}.margin", "a secondary metric is descriptive and takes no margin; "
                                  "margins belong to guardrails and to the primary metric of a "
                                  "non-inferiority experiment")
        if m["role"] == "primary" and m["margin"] > 0 and decision != "non_inferiority":
            raise ValidationError(f"{path}.margin", 'a margin on the primary metric needs "decision": '
                                  '"non_inferiority" (a superiority test has no margin)')
        if m.get("test") == "equivalence":
            if m["role"] != "guardrail":
                raise ValidationError(f"{path}.test", "equivalence is a test for guardrails")
            if not m["margin"] > 0:
                raise ValidationError(f"{path}.margin", "an equivalence guardrail needs a margin > 0")
    if decision == "non_inferiority":
        if primary is None:
            raise ValidationError("metrics", "a non-inferiority experiment needs a primary metric with a margin")
        if not metrics[primary]["margin"] > 0:
            raise ValidationError(f"metrics[{primary}].margin", "a non-inferiority experiment needs a margin > 0 "
                                  "on its primary metric (relative: 0.02 = at most 2 % worse)")
    for i, v in enumerate(variants):
        if v.get("quality_reference") is not None and quality_sample is None and not v["shadow"]:
            raise ValidationError(f"variants[{i}].quality_reference",
                                  "needs quality_sample (the share of requests to score) on the experiment")


def parse_cuped(raw: Any) -> tuple[bool, int]:
    """``"cuped": {"enabled": true, "lookback_days": 14}`` (both optional) or ``false`` to turn
    regression adjustment off: (enabled, lookback in whole days, 1 to 365)."""
    if isinstance(raw, bool):
        return raw, DEFAULT_LOOKBACK_DAYS
    c = Fields({"cuped": raw}, ["cuped"]).obj("cuped")
    f = Fields(c, ["enabled", "lookback_days"], "cuped")
    days = f.num("lookback_days", DEFAULT_LOOKBACK_DAYS)
    if days != int(days) or not 1 <= days <= MAX_LOOKBACK_DAYS:
        raise ValidationError("cuped.lookback_days", f"must be a whole number of days from 1 to "
                              f"{MAX_LOOKBACK_DAYS} (the window before a unit's first exposure), got {days!r}")
    return bool(f.bool("enabled", True)), int(days)


def parse_dimensions(raw: Any, targeting: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``"dimensions": [{"attribute": "country", "levels": ["US", "DE"]}]``: the unit attributes
    the report breaks every metric down by. ``attribute`` is one of :data:`UNIT_ATTRIBUTES` or an
    attribute the experiment targets on; ``levels`` (1 to :data:`MAX_LEVELS` distinct strings,
    not "other") are kept as they are and every other value as "other"."""
    items = Fields({"dimensions": raw}, ["dimensions"]).list("dimensions", max_len=MAX_DIMENSIONS)
    known = {*UNIT_ATTRIBUTES, *(r["attribute"] for r in targeting)}
    out, seen = [], set()
    for i, item in enumerate(items):
        path = f"dimensions[{i}]"
        d = Fields(item, ["attribute", "levels"], path)
        attribute = d.str("attribute", max_len=100)
        if attribute not in known:
            raise ValidationError(f"{path}.attribute", f"unknown attribute {attribute!r}: a dimension is one of "
                                  f"{', '.join(sorted(known))}")
        if attribute in seen:
            raise ValidationError(f"{path}.attribute", f"duplicate dimension {attribute!r}")
        seen.add(attribute)
        levels = d.list("levels", max_len=10_000)
        if not 1 <= len(levels) <= MAX_LEVELS:
            raise ValidationError(f"{path}.levels", f"a dimension has 1 to {MAX_LEVELS} levels (the rest count as "
                                  f"{OTHER_LEVEL!r}), got {len(levels)}")
        for j, level in enumerate(levels):
            if not isinstance(level, str) or not level or len(level) > MAX_LEVEL_LENGTH or level == OTHER_LEVEL:
                raise ValidationError(f"{path}.levels[{j}]", f"must be a non-empty string of at most {MAX_LEVEL_LENGTH} "
                                      f"characters other than {OTHER_LEVEL!r}")
        if len(set(levels)) != len(levels):
            raise ValidationError(f"{path}.levels", "levels must be distinct")
        check_json(levels, f"{path}.levels", max_len=MAX_LEVEL_LENGTH)
        out.append({"attribute": attribute, "levels": list(levels)})
    return out


def parse_targeting(raw: Any) -> list[dict[str, Any]]:
    items = Fields({"targeting": raw}, ["targeting"]).list("targeting", max_len=50)
    rules = []
    for i, item in enumerate(items):
        r = Fields(item, ["attribute", "op", "value"], f"targeting[{i}]")
        op = r.choice("op", list(TARGETING_OPERATORS))
        value = r._get("value", None)
        if value is None:
            raise ValidationError(f"targeting[{i}].value", "is required")
        if op in ("in", "not_in") and not isinstance(value, list):
            raise ValidationError(f"targeting[{i}].value", f"must be a list for {op!r}")
        check_json(value, f"targeting[{i}].value", max_len=MAX_TARGETING_TEXT)
        rules.append({"attribute": r.str("attribute", max_len=100), "op": op, "value": value})
    return rules


def parse_forced(raw: Any, variant_keys: set[str]) -> dict[str, str]:
    forced = Fields({"forced": raw}, ["forced"]).obj("forced")
    if len(forced) > 10_000:
        raise ValidationError("forced", "at most 10000 forced units")
    check_json(forced, "forced", max_len=MAX_UNIT_ID)  # unit ids (keys) and variants storable
    for unit, key in forced.items():
        if not isinstance(key, str) or key not in variant_keys:  # a list or object is unhashable
            raise ValidationError(f"forced.{unit}", f"unknown variant {key!r}")
    return dict(forced)


def metric_view(m: Mapping[str, Any]) -> dict[str, Any]:
    """The API's JSON form of a stored metric."""
    view = {"name": m["name"], "kind": m["kind"], "role": m["role"], "direction": m["direction"],
            "attribution_window_hours": m["attribution_window_s"] / 3600, "margin": m["margin"]}
    if m["event_name"] is not None:
        view["event"] = m["event_name"]
    if m.get("test") is not None:
        view["test"] = m["test"]
    return view
