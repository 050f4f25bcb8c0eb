"""Human-readable text of the ``abtest experiments`` commands: experiments, changes, audit entries.

Everything here takes the API's JSON forms (``experiment_view``, ``audit_entries``) and returns
plain text, so the ``--json`` output and the text one always show the same data. Timestamps are
shown in UTC to the second.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

__all__ = ["when", "value", "changes", "changed_fields", "experiment_line", "experiment_text", "audit_text"]

# Fields of an experiment view that every write changes: not worth listing as a change.
_BOOKKEEPING = ("version", "updated_at")


def when(iso: str | None) -> str:
    """``2026-11-01 12:00:03 UTC`` for an ISO timestamp (naive ones are UTC); ``-`` for none."""
    if not iso:
        return "-"
    at = datetime.fromisoformat(iso)
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def value(v: Any) -> str:
    """One value on one line: text as is, anything else as compact JSON."""
    if isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False, separators=(", ", ": "))


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{field: {"from": .., "to": ..}}`` for the fields of two views that differ (as the audit log)."""
    return {k: {"from": before.get(k), "to": after[k]} for k in after
            if k not in _BOOKKEEPING and before.get(k) != after[k]}


def _field_value(field: str, v: Any) -> str:
    """A changed field's value; variants as ``key engine weight`` summaries rather than JSON."""
    if field == "variants" and isinstance(v, list) and all(isinstance(x, Mapping) and "engine" in x for x in v):
        return ", ".join(_variant_short(x) for x in v)
    return value(v)


def _change_line(field: str, change: Mapping[str, Any]) -> str:
    return f"{field}: {_field_value(field, change['from'])} -> {_field_value(field, change['to'])}"


def changed_fields(diff: Mapping[str, Any]) -> list[str]:
    """One ``field: old -> new`` line per change (bookkeeping fields left out)."""
    return [_change_line(field, change) for field, change in diff.items() if field not in _BOOKKEEPING]


def experiment_line(view: Mapping[str, Any]) -> str:
    """``key<TAB>status<TAB>phase N<TAB>name`` (plus ``treatment paused``): one line of ``list``."""
    line = f"{view['key']}\t{view['status']}\tphase {view['phase']}\t{view['name']}"
    return line + ("\ttreatment paused" if view["treatment_paused"] else "")


def _variant(v: Mapping[str, Any]) -> str:
    roles = [r for r in ("control", "shadow") if v.get(r)]
    if v.get("quality_reference"):
        roles.append(f"scored by {v['quality_reference']}")
    return f"{v['key']}  {v['engine']}  weight {v['weight']:g}" + (f"  ({', '.join(roles)})" if roles else "")


def _variant_short(v: Mapping[str, Any]) -> str:
    """``treatment v2-int4 0.5`` (``[shadow]`` marks a shadow): a variant inside a change line."""
    return f"{v.get('key')} {v.get('engine')} {v.get('weight', 0):g}" + (" [shadow]" if v.get("shadow") else "")


def _metric(m: Mapping[str, Any]) -> str:
    kind = f"{m['kind']} of {m['event']}" if m.get("event") else m["kind"]
    text = f"{m['name']}  {kind}  {m['role']}, {m['direction']} is better"
    if m.get("margin"):
        text += f", margin {m['margin']:g}"
    if m.get("test"):
        text += f", {m['test']} test"
    return text


def _rule(r: Mapping[str, Any]) -> str:
    return f"{r['attribute']} {r['op']} {value(r['value'])}"


def _step(step: Mapping[str, Any]) -> str:
    """``2026-12-01 10:00:00 UTC  10 %  applied 2026-12-01 10:00:20 UTC`` (or pending, skipped)."""
    text = f"{when(step['at'])}  {step['coverage'] * 100:g} %  {step['state']}"
    return text + (f" {when(step['applied_at'])}" if step.get("applied_at") else "")


def _schedule(view: Mapping[str, Any]) -> list[str]:
    """The schedule lines of ``show``: start and stop times, ramp steps with their states."""
    lines: list[str] = []
    if view.get("start_at"):
        lines += _block("start at", [when(view["start_at"])])
    if view.get("stop_at"):
        lines += _block("stop at", [when(view["stop_at"])])
    if view.get("ramp"):
        lines += _block("ramp", (_step(s) for s in view["ramp"]))
    return lines


def _block(label: str, items: Iterable[str]) -> list[str]:
    items = list(items) or ["-"]
    return [f"{label:<12}{items[0]}", *(f"{'':<12}{item}" for item in items[1:])]


def experiment_text(view: Mapping[str, Any]) -> str:
    """What ``show`` prints: one field a line, lists indented under their label."""
    status = view["status"]
    if view["started_at"] and status != "draft":
        status += f" (started {when(view['started_at'])})"
    if view["stopped_at"]:
        status += f", stopped {when(view['stopped_at'])}"
    lines = [
        f"{view['key']}: {view['name']}",
        *_block("status", [status]),
        *_block("phase", [str(view["phase"])]),
        *_block("owner", [view["owner"] or "-"]),
        *_block("hypothesis", [view["hypothesis"] or "-"]),
        *_block("coverage", [f"{view['coverage'] * 100:g} % of eligible units"]),
        *_block("decision", [view["decision"]]),
        *_block("quality", [f"{view['quality_sample'] * 100:g} % of requests scored" if view["quality_sample"]
                            else "not scored"]),
        *_block("variants", (_variant(v) for v in view["variants"])),
        *_block("metrics", (_metric(m) for m in view["metrics"])),
        *_block("targeting", (_rule(r) for r in view["targeting"] or ())),
        *_block("forced", (f"{unit} -> {variant}" for unit, variant in sorted((view["forced"] or {}).items()))),
    ]
    lines += _schedule(view)
    if view["layer"]:
        lo, hi = view["layer_range"]
        lines += _block("layer", [f"{view['layer']} [{lo:g}, {hi:g})"])
    if view["treatment_paused"]:
        lines += _block("treatment", ["PAUSED: its traffic goes to the control "
                                      f"(abtest experiments resume {view['key']})"])
    lines += _block("version", [f"{view['version']}, created {when(view['created_at'])}, "
                                f"updated {when(view['updated_at'])}"])
    return "\n".join(lines)


def audit_text(entries: Iterable[Mapping[str, Any]]) -> str:
    """What ``audit`` prints: a header line per entry, then one indented line per change."""
    lines: list[str] = []
    for e in entries:
        lines.append(f"{when(e['at'])}  {e['actor']}  {e['action']}")
        entry_changes = e["changes"] or {}
        if e["action"] == "create" and "experiment" in entry_changes:
            created = entry_changes["experiment"]
            lines.append(f"    created, phase {created.get('phase', 1)}: "
                         + _field_value("variants", created.get("variants", [])))
            continue
        for field, change in entry_changes.items():
            if field in _BOOKKEEPING:
                continue
            if isinstance(change, Mapping) and set(change) == {"from", "to"}:
                lines.append(f"    {_change_line(field, change)}")
            else:
                lines.append(f"    {field}: {value(change)}")
    return "\n".join(lines)
