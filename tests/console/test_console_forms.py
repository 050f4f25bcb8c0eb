"""Creating and editing experiments from the console's form: the JSON API's validator decides,
its field path is shown next to the field, nothing is written on a refused submit, and an edit
that opens a new phase waits for an explicit confirmation."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select

from abtest.models import AuditEntry, Experiment

from .conftest import token

FIELD_ERROR = re.compile(r'data-field="([^"]+)"[^>]*>(?:(?!data-field=).)*?class="error" id="\1-error"', re.S)


def form(console: Any, path: str = "/console/new", **fields: Any) -> dict[str, Any]:
    data = {"csrf_token": token(console, path), "key": "checkout", "name": "Checkout copy", "owner": "web",
            "hypothesis": "shorter copy converts", "coverage": "1", "decision": "superiority",
            "cuped": "y", "cuped_lookback_days": "14", "targeting": "[]", "forced": "{}", "dimensions": "[]",
            "variants-0-key": "control", "variants-0-engine": "v1-fp32", "variants-0-weight": "0.5",
            "variants-0-control": "y",
            "variants-1-key": "treatment", "variants-1-engine": "v2-int4", "variants-1-weight": "0.5",
            "metrics-0-name": "conversion", "metrics-0-event": "purchase", "metrics-0-kind": "binary",
            "metrics-0-role": "primary"}
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


def errors_by_field(html: str) -> dict[str, str]:
    out = {}
    for m in re.finditer(r'<p class="error" id="([^"]+)-error" role="alert">([^<]*)</p>', html):
        out[m.group(1)] = _unescape(m.group(2))
    return out


def count_experiments(services: Any) -> int:
    with services.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(Experiment)))


def test_a_refused_field_is_shown_next_to_it_and_nothing_is_stored(console, services) -> None:
    reply = console.post("/console/new", data=form(console, **{"variants-1-weight": "lots"}))
    html = reply.get_data(as_text=True)
    assert reply.status_code == 422
    assert errors_by_field(html) == {"variants-1-weight": "variants[1].weight: must be a number"}
    assert 'id="variants-1-weight"' in html and 'value="lots"' in html  # what was typed is kept
    assert "Nothing was saved" in html and count_experiments(services) == 0


def test_a_blank_row_keeps_errors_on_the_row_that_was_typed_in(console, services) -> None:
    fields = {"variants-1-key": "", "variants-1-engine": "v1-fp32", "variants-1-weight": "",
              "variants-2-key": "treatment", "variants-2-engine": "no-such-engine", "variants-2-weight": "0.5"}
    reply = console.post("/console/new", data=form(console, **fields))
    assert reply.status_code == 422
    assert errors_by_field(reply.get_data(as_text=True)) == {
        "variants-2-engine": "variants[1].engine: unknown engine 'no-such-engine'"}
    assert count_experiments(services) == 0


def test_other_field_paths_reach_their_fields(console, services) -> None:
    cases = {
        "metrics-0-margin": ({"metrics-1-name": "latency_p99_ms", "metrics-1-role": "secondary",
                              "metrics-1-margin": "0.1"}, "metrics-1-margin"),
        "cuped": ({"cuped_lookback_days": "0"}, "cuped_lookback_days"),
        "targeting": ({"targeting": '[{"attribute": "country"}]'}, "targeting"),
        "bad json": ({"forced": "{not json"}, "forced"),
        "coverage": ({"coverage": "2"}, "coverage"),
        "key": ({"key": "Not A Slug!"}, "key"),
    }
    for name, (fields, expected) in cases.items():
        reply = console.post("/console/new", data=form(console, **fields))
        assert reply.status_code == 422, name
        found = errors_by_field(reply.get_data(as_text=True))
        assert list(found) == [expected], (name, found)
    assert count_experiments(services) == 0


def test_the_form_creates_what_the_api_creates(console, client, services, admin) -> None:
    fields = {"coverage": "0.8", "sticky": "y", "quality_sample": "0.25", "decision": "non_inferiority",
              "targeting": '[{"attribute": "country", "op": "in", "value": ["US", "CA"]}]',
              "dimensions": '[{"attribute": "country", "levels": ["US", "CA"]}]',
              "variants-1-quality_reference": "v1-fp32", "variants-1-quality_min_agreement": "0.9",
              "metrics-0-margin": "0.02", "metrics-0-attribution_window_hours": "48",
              "metrics-1-name": "error_rate", "metrics-1-role": "guardrail", "metrics-1-margin": "0.01"}
    reply = console.post("/console/new", data=form(console, **fields))
    assert reply.status_code == 302, errors_by_field(reply.get_data(as_text=True))
    assert reply.headers["Location"].endswith("/console/experiments/checkout")
    payload = {
        "key": "twin", "name": "Checkout copy", "owner": "web", "hypothesis": "shorter copy converts",
        "coverage": 0.8, "sticky": True, "quality_sample": 0.25, "decision": "non_inferiority",
        "cuped": {"enabled": True, "lookback_days": 14}, "forced": {},
        "targeting": [{"attribute": "country", "op": "in", "value": ["US", "CA"]}],
        "dimensions": [{"attribute": "country", "levels": ["US", "CA"]}],
        "variants": [{"key": "control", "engine": "v1-fp32", "weight": 0.5, "control": True},
                     {"key": "treatment", "engine": "v2-int4", "weight": 0.5, "quality_reference": "v1-fp32",
                      "quality_min_agreement": 0.9}],
        "metrics": [{"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary",
                     "margin": 0.02, "attribution_window_hours": 48},
                    {"name": "error_rate", "role": "guardrail", "margin": 0.01}],
    }
    assert client.post("/v1/experiments", json=payload, headers=admin).status_code == 201
    ours = client.get("/v1/experiments/checkout", headers=admin).get_json()
    twin = client.get("/v1/experiments/twin", headers=admin).get_json()
    skip = {"key", "created_at", "updated_at"}
    assert {k: v for k, v in ours.items() if k not in skip} == {k: v for k, v in twin.items() if k not in skip}
    with services.db.session() as session:
        actors = session.scalars(select(AuditEntry.actor).join(Experiment).where(Experiment.key == "checkout")).all()
    assert actors == ["ops"]  # the signed-in key's name


def test_the_edit_form_round_trips_and_saves_a_change(console, client, admin) -> None:
    assert console.post("/console/new", data=form(console)).status_code == 302
    before = client.get("/v1/experiments/checkout", headers=admin).get_json()
    page = console.get("/console/experiments/checkout/edit")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'value="treatment"' in html and 'name="key"' not in html
    data = _edit_fields(html)
    data["coverage"] = "0.5"
    reply = console.post("/console/experiments/checkout/edit", data=data)
    assert reply.status_code == 302, errors_by_field(reply.get_data(as_text=True))
    after = client.get("/v1/experiments/checkout", headers=admin).get_json()
    assert after["coverage"] == 0.5 and after["version"] == before["version"] + 1
    assert {k: v for k, v in after.items() if k not in ("coverage", "version", "updated_at")} == {
        k: v for k, v in before.items() if k not in ("coverage", "version", "updated_at")}


def _edit_fields(html: str) -> dict[str, str]:
    """What a browser would submit from the edit form as rendered (inputs, checked boxes,
    selected options, textareas)."""
    data: dict[str, str] = {}
    for m in re.finditer(r'<input ([^>]*)>', html):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1)))
        if "name" not in attrs or attrs.get("type") == "submit":
            continue
        if attrs.get("type") == "checkbox":
            if re.search(r"(^|\s)checked(\s|$|=)", m.group(1)):
                data[attrs["name"]] = attrs.get("value", "y")
            continue
        data[attrs["name"]] = _unescape(attrs.get("value", ""))
    for m in re.finditer(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', html, re.S):
        options = re.findall(r'<option([^>]*)>', m.group(2))
        values = [(re.search(r'value="([^"]*)"', o), re.search(r"(^|\s)selected(\s|$|=)", o)) for o in options]
        chosen = [v.group(1) for v, sel in values if v and sel] or [v.group(1) for v, _ in values if v][:1]
        data[m.group(1)] = _unescape(chosen[0] if chosen else "")
    for m in re.finditer(r'<textarea[^>]*name="([^"]+)"[^>]*>(.*?)</textarea>', html, re.S):
        data[m.group(1)] = _unescape(m.group(2).lstrip("\r\n"))
    return data


def _unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_an_edit_that_opens_a_new_phase_waits_for_confirmation(console, client, admin, services) -> None:
    assert console.post("/console/new", data=form(console)).status_code == 302
    assert client.post("/v1/experiments/checkout/start", headers=admin).status_code == 200
    data = _edit_fields(console.get("/console/experiments/checkout/edit").get_data(as_text=True))
    data.update({"variants-0-weight": "0.8", "variants-1-weight": "0.2"})
    reply = console.post("/console/experiments/checkout/edit", data=data)
    html = reply.get_data(as_text=True)
    assert reply.status_code == 409 and 'id="phase-warning"' in html and "opens phase 2" in html
    view = client.get("/v1/experiments/checkout", headers=admin).get_json()
    assert view["phase"] == 1 and [v["weight"] for v in view["variants"]] == [0.5, 0.5]  # nothing written
    confirmed = _edit_fields(html)
    assert confirmed["confirm_phase"] == "2" and "confirm_new_phase" not in confirmed
    reply = console.post("/console/experiments/checkout/edit", data={**confirmed, "confirm_new_phase": "y"})
    assert reply.status_code == 302
    view = client.get("/v1/experiments/checkout", headers=admin).get_json()
    assert view["phase"] == 2 and [v["weight"] for v in view["variants"]] == [0.8, 0.2]


def test_a_coverage_ramp_of_a_started_experiment_needs_no_confirmation(console, client, admin) -> None:
    assert console.post("/console/new", data=form(console)).status_code == 302
    assert client.post("/v1/experiments/checkout/start", headers=admin).status_code == 200
    data = _edit_fields(console.get("/console/experiments/checkout/edit").get_data(as_text=True))
    reply = console.post("/console/experiments/checkout/edit", data={**data, "coverage": "0.3"})
    assert reply.status_code == 302
    view = client.get("/v1/experiments/checkout", headers=admin).get_json()
    assert view["phase"] == 1 and view["coverage"] == 0.3


def test_the_schedule_is_set_from_the_form_and_kept_by_an_unrelated_edit(console, client, admin, services) -> None:
    from datetime import datetime, timedelta, timezone

    from abtest.services.scheduler import apply_schedules

    soon = datetime.now(timezone.utc) + timedelta(hours=1)
    ramp = [{"at": (soon + timedelta(hours=1)).isoformat(), "coverage": 0.2},
            {"at": (soon + timedelta(hours=2)).isoformat(), "coverage": 0.6}]
    fields = {"start_at": soon.isoformat(), "ramp": __import__("json").dumps(ramp)}
    assert console.post("/console/new", data=form(console, **fields)).status_code == 302
    view = client.get("/v1/experiments/checkout", headers=admin).get_json()
    assert view["start_at"] is not None and [s["coverage"] for s in view["ramp"]] == [0.2, 0.6]
    # the monitor applies the start and the first step; an edit of the name keeps the schedule's progress
    apply_schedules(services.db, soon + timedelta(hours=1, minutes=1))
    view = client.get("/v1/experiments/checkout", headers=admin).get_json()
    assert view["status"] == "running" and [s["state"] for s in view["ramp"]] == ["applied", "pending"]
    data = _edit_fields(console.get("/console/experiments/checkout/edit").get_data(as_text=True))
    reply = console.post("/console/experiments/checkout/edit", data={**data, "name": "Renamed"})
    assert reply.status_code == 302, errors_by_field(reply.get_data(as_text=True))
    view = client.get("/v1/experiments/checkout", headers=admin).get_json()
    assert view["name"] == "Renamed" and [s["state"] for s in view["ramp"]] == ["applied", "pending"]
    # a bad step is refused beside the ramp field, nothing written
    bad = {**data, "ramp": '[{"at": "2020-01-01T00:00:00Z", "coverage": 1.5}]'}
    reply = console.post("/console/experiments/checkout/edit", data=bad)
    assert reply.status_code == 422 and "ramp" in errors_by_field(reply.get_data(as_text=True))
    assert [s["state"] for s in client.get("/v1/experiments/checkout", headers=admin).get_json()["ramp"]] == [
        "applied", "pending"]
