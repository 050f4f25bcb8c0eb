"""Validation at the edge: hostile strings and hostile JSON are a clear 4xx naming the field.

No string of a request body may hold a NUL character (PostgreSQL refuses it in text and JSON)
or a lone UTF-16 surrogate (not encodable as UTF-8): 422 ``validation_error`` with the dotted
path in ``details.field``. JSON that Python's parser accepts but is not JSON (NaN, Infinity) or
is nested beyond 32 levels is a 400 ``bad_request``. In every case nothing is written, on
SQLite and PostgreSQL alike (``db_url``); POST /v1/events rejects a bad event alone.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from abtest.models import AuditEntry, Event, Experiment, Exposure, Metric, RequestLog, Variant
from tests.conftest import experiment_payload

NUL, LONE = "\x00", "\ud800"  # a NUL character; a lone (high) surrogate, sent as the escape \ud800
TOO_DEEP = "the body is nested too deeply (at most 32 levels)"
NOT_JSON_CONSTANT = "NaN and Infinity are not valid JSON"


@pytest.fixture
def app(app):  # type: ignore[no-untyped-def]
    """conftest's app with the production body limit (1 MiB): its 64 KiB would refuse the
    100,000-deep bodies with 413 before they reach the parser."""
    app.config["MAX_CONTENT_LENGTH"] = 1_048_576
    return app


def count(services: Any, model: Any) -> int:
    with services.db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)))


def units(services: Any) -> list[str]:
    with services.db.session() as session:
        return list(session.scalars(select(Exposure.unit_id)))


def post_raw(client: Any, path: str, body: str | bytes, headers: dict[str, str]) -> Any:
    """POST ``body`` as is (``json.dumps`` writes lone surrogates and NUL as \\u escapes)."""
    return client.post(path, data=body, headers={**headers, "Content-Type": "application/json"})


def assert_invalid(reply: Any, field: str) -> None:
    assert reply.status_code == 422, reply.get_json()
    error = reply.get_json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"]["field"] == field, error


def assert_bad_request(reply: Any, message: str) -> None:
    assert reply.status_code == 400, reply.get_json()
    error = reply.get_json()["error"]
    assert error["code"] == "bad_request" and error["message"] == message, error


def kind(value: Any) -> str:
    """A test id for a hostile value: which bad text it holds."""
    text = json.dumps(value)
    return "nul" if "\\u0000" in text else "surrogate" if "\\ud800" in text else "other"


def nested(depth: int) -> str:
    """A JSON value of ``depth`` nested lists."""
    return "[" * depth + "]" * depth


# --- POST /v1/assign ---------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    json.dumps({"experiment": "exp-1", "unit_id": f"user{NUL}one"}),
    json.dumps({"experiment": "exp-1", "unit_id": f"user{LONE}"}),
    b'{"experiment": "exp-1", "unit_id": "user\xed\xa0\x80"}',  # the surrogate as raw (CESU) UTF-8 bytes
], ids=["nul", "lone-surrogate-escape", "lone-surrogate-utf8-bytes"])
def test_assign_refuses_hostile_unit_id_and_writes_nothing(client, sdk, services, make_experiment, body) -> None:
    make_experiment("exp-1", start=True)
    assert_invalid(post_raw(client, "/v1/assign", body, sdk), "unit_id")
    assert units(services) == []
    # The writer is not poisoned: the next good exposure is stored, and only it.
    good = client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": "user-ok"}, headers=sdk)
    assert good.status_code == 200 and good.get_json()["in_experiment"] is True
    assert units(services) == ["user-ok"]


@pytest.mark.parametrize(("attributes", "field"), [
    ('{"country": "U\\u0000S"}', "attributes.country"),
    ('{"country": "\\ud800"}', "attributes.country"),
    ('{"co\\u0000untry": "US"}', "attributes"),
    ('{"tags": ["ok", "\\udfff"]}', "attributes.tags[1]"),
    ('{"deep": {"k": ["\\u0000"]}}', "attributes.deep.k[0]"),
    ('{"score": 1e999}', "attributes.score"),  # valid JSON, but overflows to infinity
    ('{"score": 100000000000000000000000000000}', "attributes.score"),
])
def test_assign_refuses_hostile_attributes(client, sdk, services, make_experiment, attributes, field) -> None:
    make_experiment("exp-1", start=True)
    body = '{"experiment": "exp-1", "unit_id": "u1", "attributes": %s}' % attributes
    assert_invalid(post_raw(client, "/v1/assign", body, sdk), field)
    assert units(services) == []


def test_unicode_text_is_still_accepted(client, sdk, services, make_experiment) -> None:
    make_experiment("exp-1", start=True)
    unit = "usér-✓-😀"  # a surrogate *pair* in JSON (\ud83d\ude00) is a real character
    reply = client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": unit,
                                            "attributes": {"city": "Zürich", "n": 1.5}}, headers=sdk)
    assert reply.status_code == 200, reply.get_json()
    assert units(services) == [unit]


# --- POST /v1/infer (validation fails before any engine is asked) ------------------------

@pytest.mark.parametrize(("overrides", "field"), [
    ({"unit_id": f"u{NUL}"}, "unit_id"),
    ({"unit_id": f"u{LONE}"}, "unit_id"),
    ({"prompt": f"def f():{NUL}"}, "prompt"),
    ({"prompt": f"def f():{LONE}"}, "prompt"),
    ({"stop": ["\n", f"{NUL}never"]}, "stop[1]"),
    ({"stop": [LONE]}, "stop[0]"),
    ({"attributes": {"plan": NUL}}, "attributes.plan"),
], ids=lambda v: v if isinstance(v, str) else kind(v))
def test_infer_refuses_hostile_strings_and_writes_nothing(client, sdk, services, make_experiment,
                                                          overrides, field) -> None:
    make_experiment("exp-1", start=True)
    body = {"experiment": "exp-1", "unit_id": "u1", "prompt": "def f():", "max_new_tokens": 4, **overrides}
    assert_invalid(client.post("/v1/infer", json=body, headers=sdk), field)
    assert count(services, RequestLog) == 0 and count(services, Exposure) == 0


# --- POST /v1/events: a bad event is rejected alone ----------------------------------------

def event(**fields: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "unit_id": "user-1", "name": "purchase", **fields}


@pytest.mark.parametrize(("field", "bad"), [
    ("event_id", f"e{NUL}1"), ("event_id", f"e{LONE}"),
    ("unit_id", f"user{NUL}"), ("unit_id", f"user{LONE}"),
    ("name", f"buy{NUL}"), ("name", f"caf{LONE}"),
    ("request_id", f"r{NUL}"), ("request_id", LONE),
    ("experiment", f"exp{NUL}"), ("experiment", f"exp{LONE}"),
], ids=lambda v: v if v in {"event_id", "unit_id", "name", "request_id", "experiment"} else kind(v))
def test_event_with_hostile_string_is_rejected_alone(client, sdk, services, field, bad) -> None:
    first, second = event(), event(value=2.5)
    reply = client.post("/v1/events", json={"events": [first, event(**{field: bad}), second]}, headers=sdk)
    assert reply.status_code == 202
    body = reply.get_json()
    assert (body["accepted"], body["duplicates"]) == (2, 0)
    assert [r["index"] for r in body["rejected"]] == [1]
    assert body["rejected"][0]["error"].startswith(f"{field}: must be valid Unicode text"), body
    with services.db.session() as session:
        assert set(session.scalars(select(Event.event_id))) == {first["event_id"], second["event_id"]}


@pytest.mark.parametrize("key", [f"col{NUL}our", f"col{LONE}"], ids=["nul", "surrogate"])
def test_event_with_hostile_field_name_is_rejected_alone_without_echoing_it(client, sdk, services, key) -> None:
    good = event()
    body = client.post("/v1/events", json={"events": [good, event(**{key: "red"})]}, headers=sdk).get_json()
    assert body["accepted"] == 1 and [r["index"] for r in body["rejected"]] == [1]
    assert body["rejected"][0]["error"].startswith("event: field names must be valid Unicode text"), body
    assert NUL not in body["rejected"][0]["error"] and LONE not in body["rejected"][0]["error"]
    with services.db.session() as session:
        assert list(session.scalars(select(Event.event_id))) == [good["event_id"]]


def test_event_nan_value_is_still_rejected_alone(client, sdk, services) -> None:
    """NaN is refused per event on POST /v1/events (as before), not as a 400 of the batch."""
    raw = ('{"events": [{"event_id": "a", "unit_id": "u", "name": "n"},'
           ' {"event_id": "b", "unit_id": "u", "name": "n", "value": NaN}]}')
    reply = post_raw(client, "/v1/events", raw, sdk)
    assert reply.status_code == 202
    body = reply.get_json()
    assert body["accepted"] == 1 and [(r["index"], r["error"].split(":")[0]) for r in body["rejected"]] == [(1, "value")]
    assert count(services, Event) == 1


# --- /v1/experiments: create and patch ------------------------------------------------------

def _variants(key: str = "treatment", **extra: Any) -> list[dict[str, Any]]:
    return [{"key": "control", "engine": "v1-fp32", "weight": 0.5, "control": True},
            {"key": key, "engine": "v2-int4", "weight": 0.5, **extra}]


HOSTILE_SPECS = [
    ({"key": f"exp{NUL}"}, "key"),
    ({"name": f"V2{NUL}vs V1"}, "name"),
    ({"name": f"V2{LONE}"}, "name"),
    ({"hypothesis": f"faster{NUL}"}, "hypothesis"),
    ({"owner": f"team{LONE}"}, "owner"),
    ({"layer": f"home{NUL}"}, "layer"),
    ({"variants": _variants(f"treat{NUL}ment")}, "variants[1].key"),
    ({"variants": _variants(**{f"x{LONE}": 1})}, "variants[1]"),
    ({"metrics": [{"name": f"conv{LONE}", "event": "purchase"}]}, "metrics[0].name"),
    ({"metrics": [{"name": "conversion", "event": f"purch{NUL}ase"}]}, "metrics[0].event"),
    ({"targeting": [{"attribute": f"coun{NUL}try", "op": "eq", "value": "US"}]}, "targeting[0].attribute"),
    ({"targeting": [{"attribute": "country", "op": "eq", "value": f"U{NUL}S"}]}, "targeting[0].value"),
    ({"targeting": [{"attribute": "plan", "op": "eq", "value": "pro"},
                    {"attribute": "country", "op": "in", "value": ["US", LONE]}]}, "targeting[1].value[1]"),
    ({"targeting": [{"attribute": "country", "op": "eq", "value": "x" * 201}]}, "targeting[0].value"),
    ({"targeting": [{"attribute": "score", "op": "gt", "value": 10**30}]}, "targeting[0].value"),
    ({"forced": {f"qa{NUL}": "treatment"}}, "forced"),
    ({"forced": {f"qa{LONE}": "treatment"}}, "forced"),
    ({"forced": {"u" * 201: "treatment"}}, "forced"),
    ({"forced": {"qa-1": f"treatment{NUL}"}}, "forced.qa-1"),
    ({"forced": {"qa-1": ["treatment"]}}, "forced.qa-1"),  # was a TypeError (unhashable): 500
    ({f"own{NUL}er": "x"}, "body"),
]


@pytest.mark.parametrize(("overrides", "field"), HOSTILE_SPECS, ids=[f"{f}-{kind(o)}" for o, f in HOSTILE_SPECS])
def test_create_experiment_refuses_hostile_strings_and_writes_nothing(client, admin, services,
                                                                      overrides, field) -> None:
    reply = client.post("/v1/experiments", json={**experiment_payload("exp-1"), **overrides}, headers=admin)
    assert_invalid(reply, field)
    assert [count(services, m) for m in (Experiment, Variant, Metric, AuditEntry)] == [0, 0, 0, 0]


def test_create_experiment_refuses_overflowing_targeting_value(client, admin, services) -> None:
    payload = experiment_payload("exp-1", targeting=[{"attribute": "score", "op": "gt", "value": "@INF@"}])
    body = json.dumps(payload).replace('"@INF@"', "1e999")  # valid JSON that parses to infinity
    assert_invalid(post_raw(client, "/v1/experiments", body, admin), "targeting[0].value")
    assert count(services, Experiment) == 0


PATCHABLE = [(o, f) for o, f in HOSTILE_SPECS if not {"key", "layer"} & set(o) and f != "body"]


@pytest.mark.parametrize(("overrides", "field"), PATCHABLE, ids=[f"{f}-{kind(o)}" for o, f in PATCHABLE])
def test_patch_experiment_refuses_hostile_strings_and_changes_nothing(client, admin, services, make_experiment,
                                                                      overrides, field) -> None:
    make_experiment("exp-1")
    before = client.get("/v1/experiments/exp-1", headers=admin).get_json()
    audit = count(services, AuditEntry)
    assert_invalid(client.patch("/v1/experiments/exp-1", json=overrides, headers=admin), field)
    assert client.get("/v1/experiments/exp-1", headers=admin).get_json() == before
    assert count(services, AuditEntry) == audit


# --- hostile JSON: NaN / Infinity, deep nesting ----------------------------------------------

@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_a_targeting_value_is_400_and_nothing_is_stored(client, admin, services, constant) -> None:
    payload = experiment_payload("exp-1", targeting=[{"attribute": "score", "op": "gt", "value": "@X@"}])
    reply = post_raw(client, "/v1/experiments", json.dumps(payload).replace('"@X@"', constant), admin)
    assert_bad_request(reply, NOT_JSON_CONSTANT)
    assert count(services, Experiment) == 0


def test_nan_elsewhere_is_400(client, admin, sdk, services, make_experiment) -> None:
    make_experiment("exp-1", start=True)
    assert_bad_request(post_raw(client, "/v1/assign", '{"experiment": "exp-1", "unit_id": "u", '
                                '"attributes": {"score": NaN}}', sdk), NOT_JSON_CONSTANT)
    patch = client.patch("/v1/experiments/exp-1", data='{"coverage": -Infinity}',
                         headers={**admin, "Content-Type": "application/json"})
    assert_bad_request(patch, NOT_JSON_CONSTANT)
    assert units(services) == []
    assert client.get("/v1/experiments/exp-1", headers=admin).get_json()["coverage"] == 1.0


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deep_nesting_is_400_on_every_endpoint(client, admin, sdk, services, make_experiment, depth) -> None:
    make_experiment("exp-1", start=True)
    deep = nested(depth)
    bodies = [
        ("/v1/assign", sdk, '{"experiment": "exp-1", "unit_id": "u", "attributes": {"a": %s}}' % deep),
        ("/v1/infer", sdk, '{"experiment": "exp-1", "unit_id": "u", "prompt": "x", "stop": %s}' % deep),
        ("/v1/events", sdk, '{"events": [%s]}' % deep),
        ("/v1/experiments", admin, json.dumps(experiment_payload("exp-2"))[:-1] + ', "forced": %s}' % deep),
        ("/v1/assign", sdk, deep),  # the body itself
    ]
    for path, headers, body in bodies:
        assert_bad_request(post_raw(client, path, body, headers), TOO_DEEP)
    assert_bad_request(client.patch("/v1/experiments/exp-1", data='{"targeting": %s}' % deep,
                                    headers={**admin, "Content-Type": "application/json"}), TOO_DEEP)
    assert (count(services, Exposure), count(services, Event), count(services, Experiment)) == (0, 0, 1)


def test_nesting_limit_is_32_levels(client, sdk, services, make_experiment) -> None:
    make_experiment("exp-1", start=True)

    def assign(lists: int) -> Any:  # body (1) > attributes (2) > ``lists`` nested lists
        return post_raw(client, "/v1/assign", '{"experiment": "exp-1", "unit_id": "u%d", "attributes": {"a": %s}}'
                        % (lists, nested(lists)), sdk)

    assert assign(30).status_code == 200  # 32 levels
    assert_bad_request(assign(31), TOO_DEEP)  # 33 levels: parses, refused by the walk
    assert units(services) == ["u30"]


def test_other_bad_bodies_keep_their_400(client, sdk) -> None:
    cases = [
        (client.post("/v1/assign", data="{}", headers={**sdk, "Content-Type": "text/plain"}),
         "the body must be JSON (Content-Type: application/json)"),
        (post_raw(client, "/v1/assign", '{"experiment": ', sdk), "the body is not valid JSON"),
        (post_raw(client, "/v1/assign", b'{"unit_id": "\xff"}', sdk), "the body is not valid JSON"),
        (post_raw(client, "/v1/assign", "null", sdk), "the body is not valid JSON"),
    ]
    for reply, message in cases:
        assert_bad_request(reply, message)
