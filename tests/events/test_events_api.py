"""POST /v1/events in process, on SQLite and PostgreSQL: idempotency, partial rejection, limits."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from abtest.models import Event
from abtest.services.events import MAX_BATCH, EventStore, ingest

GOOD = {"unit_id": "user-1", "name": "purchase"}


def ev(**fields: Any) -> dict[str, Any]:
    """A valid event with a fresh event_id; override or add any field."""
    return {"event_id": str(uuid.uuid4()), **GOOD, **fields}


def post(client, headers, events: Any):  # type: ignore[no-untyped-def]
    return client.post("/v1/events", json={"events": events}, headers=headers)


def stored(services) -> dict[str, Event]:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        return {e.event_id: e for e in session.scalars(select(Event))}


def test_batch_is_stored_with_defaults(client, sdk, services) -> None:
    before = datetime.now(timezone.utc)
    events = [ev(), ev(value=19.99, request_id="r" * 36, experiment="exp-1", timestamp="2024-05-01T12:00:00Z"),
              ev(value=3, timestamp="2024-05-01T12:00:00")]
    reply = post(client, sdk, events)
    after = datetime.now(timezone.utc)
    assert reply.status_code == 202
    assert reply.get_json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    rows = stored(services)
    assert set(rows) == {e["event_id"] for e in events}
    first, second, third = (rows[e["event_id"]] for e in events)
    assert first.value == 1.0 and first.request_id is None and first.experiment_key is None
    assert before <= first.timestamp <= after  # default: server time
    assert before <= first.received_at <= after
    assert (second.unit_id, second.name, second.value) == ("user-1", "purchase", 19.99)
    assert (second.request_id, second.experiment_key) == ("r" * 36, "exp-1")
    assert second.timestamp == datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    assert third.timestamp == second.timestamp  # naive timestamps are UTC
    assert third.value == 3.0


def test_offset_timestamps_are_stored_as_utc_and_unicode_survives(client, sdk, services) -> None:
    event = ev(timestamp="2024-05-01T14:30:00+02:00", unit_id="usér-✓", name="köp", experiment="实验")
    assert post(client, sdk, [event]).get_json()["accepted"] == 1
    row = stored(services)[event["event_id"]]
    assert row.timestamp == datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    assert (row.unit_id, row.name, row.experiment_key) == ("usér-✓", "köp", "实验")


def test_duplicates_within_and_across_batches_count_once(client, sdk, services) -> None:
    a, b, c = ev(), ev(), ev()
    first = post(client, sdk, [a, b, a, dict(a, value=5)]).get_json()
    assert first == {"accepted": 2, "duplicates": 2, "rejected": []}
    second = post(client, sdk, [b, c, a, c]).get_json()
    assert second == {"accepted": 1, "duplicates": 3, "rejected": []}
    rows = stored(services)
    assert set(rows) == {a["event_id"], b["event_id"], c["event_id"]}
    assert rows[a["event_id"]].value == 1.0  # the first copy wins; a resend changes nothing


def test_bad_events_are_rejected_alone(client, sdk, services) -> None:
    good = [ev(), ev(), ev()]
    batch = [good[0], {"event_id": "x", "name": "purchase"}, good[1], ev(value="ten"), good[2]]
    body = post(client, sdk, batch).get_json()
    assert body["accepted"] == 3 and body["duplicates"] == 0
    assert [r["index"] for r in body["rejected"]] == [1, 3]
    assert body["rejected"][0]["error"].startswith("unit_id:")
    assert body["rejected"][1]["error"].startswith("value:")
    assert set(stored(services)) == {e["event_id"] for e in good}


def _in(minutes: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(minutes=minutes)).isoformat()


BAD_EVENTS = [
    ("not-an-object", "event", ["purchase"]),
    ("null event", "event", None),
    ("missing event_id", "event_id", {**GOOD}),
    ("null event_id", "event_id", {**GOOD, "event_id": None}),
    ("empty event_id", "event_id", {**GOOD, "event_id": ""}),
    ("blank event_id", "event_id", {**GOOD, "event_id": "   "}),
    ("numeric event_id", "event_id", {**GOOD, "event_id": 42}),
    ("event_id > 64", "event_id", {**GOOD, "event_id": "e" * 65}),
    ("missing unit_id", "unit_id", {"event_id": "e1", "name": "purchase"}),
    ("unit_id > 200", "unit_id", {"event_id": "e1", "name": "purchase", "unit_id": "u" * 201}),
    ("missing name", "name", {"event_id": "e1", "unit_id": "u"}),
    ("name > 100", "name", {"event_id": "e1", "unit_id": "u", "name": "n" * 101}),
    ("name not a string", "name", {"event_id": "e1", "unit_id": "u", "name": ["a"]}),
    ("unit_id with NUL", "unit_id", ev(unit_id="user\x001")),
    ("name with a lone surrogate", "name", ev(name="caf\ud800")),
    ("value string", "value", ev(value="1.5")),
    ("value bool", "value", ev(value=True)),
    ("value huge int", "value", ev(value=10**400)),
    ("timestamp garbage", "timestamp", ev(timestamp="yesterday")),
    ("timestamp number", "timestamp", ev(timestamp=1714564800)),
    ("timestamp out of range in UTC", "timestamp", ev(timestamp="0001-01-01T00:00:00+05:00")),
    ("timestamp too far ahead", "timestamp", None),  # built at run time: now + 6 minutes
    ("request_id > 36", "request_id", ev(request_id="r" * 37)),
    ("request_id number", "request_id", ev(request_id=7)),
    ("experiment > 100", "experiment", ev(experiment="x" * 101)),
    ("unknown field", "colour", ev(colour="red")),
]


@pytest.mark.parametrize(("case", "field", "event"), BAD_EVENTS, ids=[c[0] for c in BAD_EVENTS])
def test_each_kind_of_bad_event_is_rejected_naming_its_field(client, sdk, services, case, field, event) -> None:
    if case == "timestamp too far ahead":
        event = ev(timestamp=_in(6))
    good = ev()
    body = post(client, sdk, [good, event]).get_json()
    assert body["accepted"] == 1 and body["duplicates"] == 0
    assert len(body["rejected"]) == 1
    assert body["rejected"][0]["index"] == 1
    assert body["rejected"][0]["error"].startswith(f"{field}:"), body["rejected"][0]["error"]
    assert set(stored(services)) == {good["event_id"]}


def test_non_finite_values_are_rejected(client, sdk, services) -> None:
    raw = ('{"events": [{"event_id": "a", "unit_id": "u", "name": "n", "value": NaN},'
           ' {"event_id": "b", "unit_id": "u", "name": "n", "value": Infinity},'
           ' {"event_id": "c", "unit_id": "u", "name": "n", "value": 1e999}]}')
    reply = client.post("/v1/events", data=raw, headers={**sdk, "Content-Type": "application/json"})
    body = reply.get_json()
    assert body["accepted"] == 0
    assert [(r["index"], r["error"].split(":")[0]) for r in body["rejected"]] == [(0, "value"), (1, "value"), (2, "value")]
    assert stored(services) == {}


def test_timestamps_a_little_ahead_are_accepted(client, sdk, services) -> None:
    body = post(client, sdk, [ev(timestamp=_in(4)), ev(timestamp=_in(-60 * 24 * 30))]).get_json()
    assert body == {"accepted": 2, "duplicates": 0, "rejected": []}


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"),
    ("events", "body"),
    ({}, "events"),
    ({"events": None}, "events"),
    ({"events": {"event_id": "a"}}, "events"),
    ({"events": [], "extra": 1}, "extra"),
])
def test_malformed_body_is_422_naming_the_field(client, sdk, services, body, field) -> None:
    reply = client.post("/v1/events", json=body, headers=sdk)
    assert reply.status_code == 422
    error = reply.get_json()["error"]
    assert error["code"] == "validation_error" and error["details"]["field"] == field
    assert stored(services) == {}


def test_empty_batch_is_accepted(client, sdk) -> None:
    assert post(client, sdk, []).get_json() == {"accepted": 0, "duplicates": 0, "rejected": []}


def _compact(n: int, start: int = 0) -> list[dict[str, str]]:
    # Short fields so MAX_BATCH + 1 events fit the test app's 64 KiB body limit: the 413
    # must come from the batch limit, not from the body size.
    return [{"event_id": f"e{i}", "unit_id": "u", "name": "n"} for i in range(start, start + n)]


def test_more_than_the_batch_limit_is_413_and_stores_nothing(client, sdk, services) -> None:
    reply = post(client, sdk, _compact(MAX_BATCH + 1))
    assert reply.status_code == 413
    assert reply.get_json()["error"]["code"] == "payload_too_large"
    assert str(MAX_BATCH) in reply.get_json()["error"]["message"]
    assert stored(services) == {}
    full = post(client, sdk, _compact(MAX_BATCH))
    assert full.status_code == 202 and full.get_json()["accepted"] == MAX_BATCH


def test_requires_an_api_key(client, services) -> None:
    reply = post(client, {}, [ev()])
    assert reply.status_code == 401
    assert stored(services) == {}


def test_admin_keys_may_send_events(client, admin) -> None:
    assert post(client, admin, [ev()]).get_json()["accepted"] == 1


def test_racing_writers_store_each_event_once(services) -> None:
    """Two threads send overlapping batches at once: the unique constraint decides."""
    store = EventStore(services.db)
    shared = [ev() for _ in range(300)]
    results: list[Any] = []
    barrier = threading.Barrier(4)

    def send(offset: int) -> None:
        barrier.wait()
        results.append(ingest(store, {"events": shared[offset:] + shared[:offset]}))

    threads = [threading.Thread(target=send, args=(k * 75,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.accepted for r in results) == len(shared)
    assert sum(r.duplicates for r in results) == 3 * len(shared)
    with services.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == len(shared)


def test_unreachable_database_is_503_with_retry_after(client, sdk, services, monkeypatch) -> None:
    def down(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("connection refused"))

    monkeypatch.setattr(EventStore, "insert", down)
    reply = post(client, sdk, [ev()])
    assert reply.status_code == 503
    assert reply.get_json()["error"]["code"] == "service_unavailable"
    assert reply.headers["Retry-After"] == "1"


def test_one_bulk_statement_per_batch(client, sdk, services) -> None:
    """A batch of MAX_BATCH events is one INSERT ... ON CONFLICT DO NOTHING RETURNING, one execute."""
    post(client, sdk, [ev()])  # warm the key cache so only the batch's statements are seen
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    sa_event.listen(services.db.engine, "before_cursor_execute", seen)
    try:
        reply = post(client, sdk, _compact(MAX_BATCH, start=10_000))
    finally:
        sa_event.remove(services.db.engine, "before_cursor_execute", seen)
    assert reply.get_json()["accepted"] == MAX_BATCH
    inserts = [sql for sql in statements if sql.lstrip().upper().startswith("INSERT")]
    assert len(inserts) == 1, statements
    sql = inserts[0]
    assert "ON CONFLICT (event_id) DO NOTHING" in sql and "RETURNING" in sql
    if services.db.dialect == "sqlite":  # every row in the one multi-row VALUES list
        assert sql.count("(?, ?, ?, ?, ?, ?, ?, ?)") == MAX_BATCH
    else:  # the whole batch is one JSON parameter
        assert "jsonb_array_elements" in sql
