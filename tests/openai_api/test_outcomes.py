"""Requests through the OpenAI routes belong to the experiment exactly as /v1/infer's do:
exposure, outcome row, rollups, the report; a client that leaves mid-stream is ``cancelled``,
which is not an engine error. Embedded mode, in process, real SQLite and tiny engines."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from abtest.models import Exposure, RequestLog, UnitOutcome

from .test_bad_input import api  # noqa: F401 - the in-process app fixture

pytest.importorskip("torch")

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]


def test_streamed_and_plain_requests_are_logged_like_infer(api) -> None:  # noqa: F811
    client, sdk, services = api
    ids = []
    for unit, stream in [("u1", False), ("u1", True), ("u2", True)]:
        reply = client.post("/v1/chat/completions", headers=sdk, json={
            "model": "chat", "messages": MESSAGES, "user": unit, "max_tokens": 5, "temperature": 0, "stream": stream})
        assert reply.status_code == 200
        reply.get_data()  # the whole stream
        ids.append((reply.headers["X-Abtest-Request-Id"], unit, reply.headers["X-Abtest-Variant"]))
    infer = client.post("/v1/infer", headers=sdk, json={"experiment": "chat", "unit_id": "u1", "prompt": "x",
                                                         "max_new_tokens": 2}).get_json()
    with services.db.session() as session:
        rows = {r.request_id: r for r in session.scalars(select(RequestLog))}
        exposures = {(e.unit_id, e.variant) for e in session.scalars(select(Exposure))}
        rollups = {(u.unit_id, u.variant): u for u in session.scalars(select(UnitOutcome))}
    for rid, unit, variant in ids:
        row = rows[rid]
        assert (row.status, row.unit_id, row.variant, row.in_experiment) == ("ok", unit, variant, True)
        assert row.ttft_ms is not None and row.completion_tokens is not None and row.finish_reason
        assert (unit, variant) in exposures
    assert infer["variant"] == ids[0][2]  # the same unit, the same variant, whichever route
    u1 = rollups[("u1", ids[0][2])]
    assert (u1.requests, u1.ok, u1.errors) == (3, 3, 0)
    assert rollups[("u2", ids[2][2])].requests == 1


def test_a_client_that_leaves_is_cancelled_not_an_error(api) -> None:  # noqa: F811
    client, sdk, services = api
    reply = client.post("/v1/chat/completions", headers=sdk, buffered=False, json={
        "model": "chat", "messages": MESSAGES, "user": "leaver", "max_tokens": 400, "temperature": 1.0,
        "seed": 3, "stream": True})
    assert reply.status_code == 200
    frames = iter(reply.response)
    first = [next(frames) for _ in range(3)]  # the role chunk and the first pieces of text
    assert all(f.startswith(b"data: ") for f in first)
    assert json.loads(first[1][6:])["choices"][0]["delta"]["content"]
    reply.close()  # the client hangs up
    rid = reply.headers["X-Abtest-Request-Id"]
    with services.db.session() as session:
        row = session.get(RequestLog, rid)
        rollup = session.get(UnitOutcome, (row.experiment_id, row.phase, row.variant, "leaver"))
    assert (row.status, row.error_code) == ("cancelled", "client_disconnected")
    assert row.ttft_ms is not None  # its first text did go out
    assert (rollup.requests, rollup.ok, rollup.errors, rollup.rejected, rollup.unavailable) == (1, 0, 0, 0, 0)
    # the engine is free for the next caller
    after = client.post("/v1/chat/completions", headers=sdk, json={
        "model": "chat", "messages": MESSAGES, "user": "leaver", "max_tokens": 2})
    assert after.status_code == 200


def test_a_deadline_mid_stream_is_the_last_frame_and_a_timeout_row(api) -> None:  # noqa: F811
    client, sdk, services = api
    reply = client.post("/v1/chat/completions", headers=sdk, buffered=False, json={
        "model": "chat", "messages": MESSAGES, "user": "slow", "max_tokens": 400, "temperature": 1.0,
        "seed": 3, "stream": True})
    assert reply.status_code == 200
    frames = iter(reply.response)
    assert next(frames).startswith(b"data: ") and next(frames).startswith(b"data: ")
    inference = services.inference
    timeout, inference.timeout_s = inference.timeout_s, 0.0  # the request's deadline has now passed
    try:
        rest = b"".join(frames)
    finally:
        inference.timeout_s = timeout
    events = [e for e in rest.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    error = json.loads(events[-2][6:])["error"]
    assert (error["type"], error["code"]) == ("api_error", "engine_timeout")
    rid = reply.headers["X-Abtest-Request-Id"]
    with services.db.session() as session:
        row = session.get(RequestLog, rid)
    assert (row.status, row.error_code) == ("timeout", "engine_timeout")


def test_a_conversion_is_attributed_by_the_request_id_header(api) -> None:  # noqa: F811
    client, sdk, services = api
    served = {}
    # enough units that each variant gets two or more whatever the experiment's random salt
    # (a variant with a single unit has no estimate; with 6 units that happens in about 1 run of 5)
    for unit in (f"u{i}" for i in range(1, 25)):
        reply = client.post("/v1/chat/completions", headers=sdk, json={
            "model": "chat", "messages": MESSAGES, "user": unit, "max_tokens": 2, "stream": True})
        reply.get_data()
        served[unit] = (reply.headers["X-Abtest-Variant"], reply.headers["X-Abtest-Request-Id"])
    variant, rid = served["u3"]
    event = {"event_id": "e-1", "unit_id": "someone-else", "name": "purchase", "request_id": rid}
    assert client.post("/v1/events", headers=sdk, json={"events": [event]}).status_code == 202
    from abtest.services.keys import create_key

    with services.db.transaction() as session:
        admin = {"Authorization": f"Bearer {create_key(session, 'reader', 'admin')}"}
    report = client.get("/v1/experiments/chat/report", headers=admin).get_json()
    conversion = next(m for m in report["metrics"] if m["name"] == "conversion")["variants"]
    units = {v: sum(1 for var, _ in served.values() if var == v) for v in ("control", "treatment")}
    for v, x in conversion.items():  # the purchase counts for u3, whose request it names
        assert x["units"] == units[v]
        assert x["estimate"] == pytest.approx(1 / units[v] if v == variant else 0.0)
