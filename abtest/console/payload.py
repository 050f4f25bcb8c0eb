"""Between the experiment form and the JSON API's payload, both ways, and from a validation
error's field path to the form field it names.

Only shapes change here: text that reads as a number becomes one, anything else is passed on
as typed, so the service's validator (the JSON API's) is what accepts or refuses it and names
the field. Blank variant and metric rows are left out; :class:`Payload` remembers which row
each payload item came from, so ``variants[1].weight`` points at the row the person typed in.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from werkzeug.datastructures import MultiDict

from .forms import METRIC_ROWS, VARIANT_ROWS, ExperimentForm

__all__ = ["Payload", "form_payload", "form_data", "rows_needed", "error_field", "number"]

_VARIANT_FIELDS = ("key", "engine", "weight", "control", "shadow", "quality_reference", "quality_min_agreement")
_METRIC_FIELDS = ("name", "event", "kind", "role", "direction", "margin", "attribution_window_hours", "test")
_JSON_BLOCKS = ("targeting", "forced", "dimensions")
_PATH = re.compile(r"^(?P<name>[a-z_]+)(?:\[(?P<index>\d+)\])?(?:\.(?P<sub>[a-z_]+))?")


@dataclass
class Payload:
    body: dict[str, Any]
    rows: dict[str, list[int]] = field(default_factory=dict)  # "variants" -> form row of each item
    bad_json: tuple[str, str] | None = None  # (field, message) of a JSON block that does not parse


def number(text: str | None) -> Any:
    """A number when the text reads as one (``"0.5"`` -> 0.5, ``"3"`` -> 3); else the text as is."""
    raw = (text or "").strip()
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        value = float(raw)
    except ValueError:
        return raw
    return value if value == value and abs(value) != float("inf") else raw


def _filled(text: Any) -> bool:
    return isinstance(text, str) and text.strip() != ""


def form_payload(form: ExperimentForm, *, creating: bool, current: dict[str, Any] | None = None) -> Payload:
    """The payload of ``POST /v1/experiments`` (creating) or ``PATCH`` (every mutable field; the
    schedule only where it differs from ``current``, the experiment's view: a PATCH of the ramp
    starts it over, and a start time already past cannot be set again)."""
    body: dict[str, Any] = {}
    out = Payload(body)
    if creating:
        body["key"] = form.key.data or ""
        if _filled(form.layer.data):
            body["layer"] = form.layer.data.strip()
        if _filled(form.layer_share.data):
            body["layer_share"] = number(form.layer_share.data)
    body["name"] = form.name.data or ""
    body["hypothesis"] = form.hypothesis.data or ""
    body["owner"] = form.owner.data or ""
    body["coverage"] = number(form.coverage.data) if _filled(form.coverage.data) else 1.0
    variants, out.rows["variants"] = [], []
    for i, row in enumerate(form.variants.entries):
        d = row.form
        if not any(_filled(getattr(d, n).data) for n in ("key", "weight")):
            continue
        item: dict[str, Any] = {"key": d.key.data or "", "engine": d.engine.data or "",
                                "control": bool(d.control.data), "shadow": bool(d.shadow.data)}
        if _filled(d.weight.data):
            item["weight"] = number(d.weight.data)
        if _filled(d.quality_reference.data):
            item["quality_reference"] = d.quality_reference.data
        if _filled(d.quality_min_agreement.data):
            item["quality_min_agreement"] = number(d.quality_min_agreement.data)
        variants.append(item)
        out.rows["variants"].append(i)
    body["variants"] = variants
    metrics, out.rows["metrics"] = [], []
    for i, row in enumerate(form.metrics.entries):
        d = row.form
        if not _filled(d.name.data):
            continue
        item = {"name": d.name.data.strip(), "role": d.role.data or "secondary"}
        for name in ("event", "kind", "direction", "test"):
            if _filled(getattr(d, name).data):
                item[name] = getattr(d, name).data.strip()
        for name in ("margin", "attribution_window_hours"):
            if _filled(getattr(d, name).data):
                item[name] = number(getattr(d, name).data)
        metrics.append(item)
        out.rows["metrics"].append(i)
    body["metrics"] = metrics
    body["decision"] = form.decision.data
    body["quality_sample"] = number(form.quality_sample.data) if _filled(form.quality_sample.data) else None
    body["sticky"] = bool(form.sticky.data)
    cuped: dict[str, Any] = {"enabled": bool(form.cuped.data)}
    if _filled(form.cuped_lookback_days.data):
        cuped["lookback_days"] = number(form.cuped_lookback_days.data)
    body["cuped"] = cuped
    for name in _JSON_BLOCKS:
        text = getattr(form, name).data
        if not _filled(text):
            continue
        try:
            body[name] = json.loads(text)
        except ValueError as exc:
            out.bad_json = out.bad_json or (name, f"{name}: is not valid JSON ({exc})")
    _schedule(form, out, current if not creating else None)
    return out


def _schedule(form: ExperimentForm, out: Payload, current: dict[str, Any] | None) -> None:
    """``start_at``, ``stop_at`` and ``ramp`` into the payload: given ones when creating, changed
    ones when editing (a cleared time is null)."""
    for name in ("start_at", "stop_at"):
        text = (getattr(form, name).data or "").strip()
        if current is None:
            if text:
                out.body[name] = text
        elif text != (current.get(name) or ""):
            out.body[name] = text or None
    text = (form.ramp.data or "").strip() or "[]"
    try:
        ramp = json.loads(text)
    except ValueError as exc:
        out.bad_json = out.bad_json or ("ramp", f"ramp: is not valid JSON ({exc})")
        return
    if current is None:
        if ramp:
            out.body["ramp"] = ramp
    elif ramp != _steps(current):
        out.body["ramp"] = ramp


def _steps(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"at": s["at"], "coverage": s["coverage"]} for s in view.get("ramp") or ()]


def form_data(view: dict[str, Any], engines: list[str]) -> MultiDict[str, Any]:
    """The form's fields filled from an experiment's view (:func:`experiment_view`)."""
    data: MultiDict[str, Any] = MultiDict()
    for name in ("key", "name", "hypothesis", "owner", "decision"):
        data[name] = view.get(name) or ""
    data["coverage"] = _text(view.get("coverage"))
    if view.get("layer"):
        lo, hi = view["layer_range"]
        data["layer"], data["layer_share"] = view["layer"], _text(round(hi - lo, 12))
    data["quality_sample"] = _text(view.get("quality_sample"))
    if view.get("sticky"):
        data["sticky"] = "y"
    cuped = view.get("cuped") or {}
    if cuped.get("enabled", True):
        data["cuped"] = "y"
    data["cuped_lookback_days"] = _text(cuped.get("lookback_days", 14))
    for i, v in enumerate(view.get("variants", [])):
        row = {**v, "control": v.get("control")}
        for name in _VARIANT_FIELDS:
            value = row.get(name)
            if isinstance(value, bool):
                if value:
                    data[f"variants-{i}-{name}"] = "y"
            elif value is not None:
                data[f"variants-{i}-{name}"] = _text(value)
    for i, m in enumerate(view.get("metrics", [])):
        for name in _METRIC_FIELDS:
            if m.get(name) is not None:
                data[f"metrics-{i}-{name}"] = _text(m[name])
    for name in _JSON_BLOCKS:
        data[name] = json.dumps(view.get(name) or ({} if name == "forced" else []), indent=2)
    data["start_at"], data["stop_at"] = view.get("start_at") or "", view.get("stop_at") or ""
    data["ramp"] = json.dumps(_steps(view), indent=2)
    return data


def rows_needed(view: dict[str, Any]) -> tuple[int, int]:
    """(variant rows, metric rows) the edit form shows: every item plus room for more."""
    return (max(VARIANT_ROWS, len(view.get("variants", [])) + 1),
            max(METRIC_ROWS, len(view.get("metrics", [])) + 2))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def error_field(path: str, payload: Payload, form: ExperimentForm) -> str:
    """The form field a validation error's ``path`` names (``variants[1].weight`` ->
    ``variants-<its row>-weight``, ``cuped.lookback_days`` -> ``cuped_lookback_days``,
    ``targeting[0].attribute`` -> ``targeting``); the nearest enclosing field when there is none."""
    match = _PATH.match(path or "")
    if match is None:
        return ""
    name, index, sub = match["name"], match["index"], match["sub"]
    if name in ("variants", "metrics") and index is not None:
        rows = payload.rows.get(name, [])
        row = rows[int(index)] if int(index) < len(rows) else int(index)
        if sub and f"{name}-{row}-{sub}" in _names(form):
            return f"{name}-{row}-{sub}"
        if sub == "event_name" and f"{name}-{row}-event" in _names(form):
            return f"{name}-{row}-event"
        return f"{name}-{row}-name" if name == "metrics" else f"{name}-{row}-key"
    if name == "cuped" and sub:
        return f"cuped_{sub}" if f"cuped_{sub}" in _names(form) else "cuped"
    return name if name in _names(form) else ""


def _names(form: ExperimentForm) -> set[str]:
    names = set()
    for f in form:
        if f.type == "FieldList":
            for entry in f.entries:
                names.update(sub.name for sub in entry.form)
        else:
            names.add(f.name)
    return names
