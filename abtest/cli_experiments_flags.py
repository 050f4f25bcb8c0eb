"""The PATCH body of ``abtest experiments update``: its ``-f`` file merged with its flags.

Plain functions (no click, no database): ``--weights control=0.4,treatment=0.6`` becomes the
current variants with those weights, ``--force``/``--unforce`` edit the current forced units,
``--quality-sample none`` clears scoring. Every value still goes through the API's validation
afterwards; what is refused here is only what the flags' own syntax makes wrong, and it is
refused the same way, as a :class:`~abtest.errors.ValidationError` naming the flag.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import ValidationError

__all__ = ["patch_body", "weights", "forced_units", "share_or_none", "schedule_fields"]

_CLEAR = ("none", "null", "off")

# Fields set once, at creation (key, layer, layer_share).


def weights(text: str, variants: Any) -> list[dict[str, Any]]:
    """``control=0.4,treatment=0.6`` applied to ``variants`` (unnamed ones keep their weight)."""
    if not isinstance(variants, list) or not all(isinstance(v, Mapping) for v in variants):
        raise ValidationError("variants", "must be a list of objects")
    known = [v.get("key") for v in variants]
    given: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        key, sep, number = part.partition("=")
        try:
            weight = float(number)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ValidationError("weights", f"{part!r} is not VARIANT=WEIGHT (e.g. control=0.5,treatment=0.5)")
        key = key.strip()
        if key not in known:
            raise ValidationError("weights", f"unknown variant {key!r} (variants: {', '.join(map(str, known))})")
        if key in given:
            raise ValidationError("weights", f"variant {key!r} is given twice")
        given[key] = weight
    return [{**v, "weight": given.get(v.get("key"), v.get("weight"))} for v in variants]


def forced_units(forced: Any, force: tuple[str, ...], unforce: tuple[str, ...]) -> dict[str, Any]:
    """``forced`` with ``UNIT=VARIANT`` pairs added and ``UNIT`` entries removed."""
    if not isinstance(forced, Mapping):
        raise ValidationError("forced", "must be a JSON object")
    result = dict(forced)
    for item in force:
        unit, sep, variant = item.rpartition("=")  # variant keys are slugs: no '=' in them
        if not sep or not unit or not variant:
            raise ValidationError("force", f"{item!r} is not UNIT=VARIANT (e.g. qa-user-1=treatment)")
        if unit in unforce:
            raise ValidationError("unforce", f"unit {unit!r} is also given to --force")
        result[unit] = variant
    for unit in unforce:
        if unit not in result:
            raise ValidationError("unforce", f"unit {unit!r} is not forced")
        del result[unit]
    return result


def share_or_none(text: str) -> float | None:
    """``--quality-sample``: a number (the service checks its range), or none/null/off for no scoring."""
    if text.strip().lower() in ("none", "null", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ValidationError("quality_sample", "must be a number in (0, 1], or none to stop scoring") from None


def _ramp_steps(items: tuple[str, ...]) -> list[dict[str, Any]]:
    """``--ramp-step AT=COVERAGE`` (repeated) as ramp steps, in the order given."""
    steps = []
    for item in items:
        at, sep, number = item.rpartition("=")  # ISO times have no '='
        try:
            coverage = float(number)
        except ValueError:
            sep = ""
        if not sep or not at.strip():
            raise ValidationError("ramp-step", f"{item!r} is not AT=COVERAGE (e.g. 2026-12-01T10:00:00Z=0.1)")
        steps.append({"at": at.strip(), "coverage": coverage})
    return steps


def schedule_fields(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ramp``, ``start_at`` and ``stop_at`` fields of the flags given (none/null: clear)."""
    fields: dict[str, Any] = {}
    ramp, steps = opts.get("ramp"), opts.get("ramp_step") or ()
    if ramp is not None and steps:
        raise ValidationError("ramp-step", "give --ramp or --ramp-step, not both")
    if ramp is not None:
        if ramp.strip().lower() in _CLEAR:
            fields["ramp"] = []
        else:
            try:
                fields["ramp"] = json.loads(ramp)
            except json.JSONDecodeError as exc:
                raise ValidationError("ramp", f"is not valid JSON ({exc}); e.g. "
                                      '[{"at": "2026-12-01T10:00:00Z", "coverage": 0.1}]') from None
    elif steps:
        fields["ramp"] = _ramp_steps(tuple(steps))
    for name in ("start_at", "stop_at"):
        if opts.get(name) is not None:
            fields[name] = None if opts[name].strip().lower() in _CLEAR else opts[name]
    return fields


def patch_body(current: Mapping[str, Any], base: Any, opts: Mapping[str, Any]) -> dict[str, Any]:
    """The PATCH body: the ``-f`` file's fields, then each flag given (against ``current``).

    ``opts`` holds the flags (None: not given) and, under ``files``, the parsed JSON of the
    ``--variants``/``--targeting``/``--metrics`` files that were given.
    """
    if not isinstance(base, Mapping):
        raise ValidationError("body", "must be a JSON object")
    payload = {**base, **opts["files"]}
    for field in ("name", "owner", "hypothesis", "coverage", "decision"):
        if opts[field] is not None:
            payload[field] = opts[field]
    if opts["quality_sample"] is not None:
        payload["quality_sample"] = share_or_none(opts["quality_sample"])
    if opts.get("sticky") is not None:
        payload["sticky"] = opts["sticky"]
    if opts["weights"] is not None:
        payload["variants"] = weights(opts["weights"], payload.get("variants", current["variants"]))
    if opts["force"] or opts["unforce"]:
        payload["forced"] = forced_units(payload.get("forced", current["forced"]), opts["force"], opts["unforce"])
    payload.update(schedule_fields(opts))
    return payload
