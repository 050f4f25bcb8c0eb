"""Event ingestion: validate a batch, store the good events once each, report the rest.

Idempotency is the database's job, not a cache's: ``events.event_id`` is unique and a batch
is written with one ``INSERT ... ON CONFLICT (event_id) DO NOTHING RETURNING event_id``, so a
resent event (a client retry, a duplicate inside one batch, two workers racing) is stored
once and ``accepted`` counts exactly the rows this call inserted. One batch is one round trip
and one transaction.

This is the hot path of the service (tens of thousands of events per second on two cores), so
validation is hand-written per field rather than built from :class:`abtest.validation.Fields`
(which raises on the first error and so cannot reject one event while keeping its siblings),
rows are plain tuples bound to one cached Core statement (no ORM objects), and timestamps
are parsed with :meth:`datetime.fromisoformat`. ``python -m benchmarks.ingest`` measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from operator import itemgetter
from typing import Any

from sqlalchemy import DateTime, Float, Insert, bindparam, cast, func, literal_column, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ..db import Database
from ..errors import PayloadTooLarge, ValidationError
from ..models import Event
from ..validation import KEY_ERROR, TEXT_ERROR, storable

__all__ = [
    "MAX_BATCH",
    "MAX_FUTURE",
    "EVENT_FIELDS",
    "COLUMNS",
    "Row",
    "LIMITS",
    "IngestResult",
    "Rejection",
    "validate_events",
    "ingest",
    "EventStore",
]

# Most events one POST /v1/events may carry; a larger batch is refused whole (413) before
# any event is read, so clients split it (the SDK halves a batch on 413).
MAX_BATCH = 1000
# Clocks drift; events stamped further ahead than this are refused rather than stored in
# the future, where they would count toward windows that have not happened yet.
MAX_FUTURE = timedelta(minutes=5)
EVENT_FIELDS = frozenset({"event_id", "unit_id", "name", "value", "timestamp", "request_id", "experiment"})
# Longest accepted string per field: the widths of the ``events`` columns.
LIMITS = {"event_id": 64, "unit_id": 200, "name": 100, "request_id": 36, "experiment": 100}
_UTC = timezone.utc
# The columns a validated event fills, in the order of a :data:`Row`; ``received_at`` is
# the same for the whole batch and bound once.
COLUMNS = ("event_id", "unit_id", "name", "value", "timestamp", "request_id", "experiment_key")
Row = tuple[str, str, str, float, datetime, "str | None", "str | None"]


@dataclass(frozen=True)
class Rejection:
    """One refused event: its position in the batch and a message naming the field."""

    index: int
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "error": self.error}


@dataclass(frozen=True)
class IngestResult:
    """``accepted`` rows inserted now; ``duplicates`` valid events already stored."""

    accepted: int
    duplicates: int
    rejected: list[Rejection] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates,
                "rejected": [r.to_dict() for r in self.rejected]}


class _Bad(Exception):
    """Internal: one event is invalid (never escapes this module)."""


def _text(event: dict[str, Any], key: str, required: bool) -> str | None:
    value = event.get(key)
    if value is None:
        if required:
            raise _Bad(f"{key}: is required")
        return None
    if type(value) is not str:
        raise _Bad(f"{key}: must be a string")
    if len(value) > LIMITS[key]:
        raise _Bad(f"{key}: must be at most {LIMITS[key]} characters")
    if not value or value.isspace():
        raise _Bad(f"{key}: must not be empty")
    # Checked here, per event, because one such string would otherwise fail the whole batch's
    # insert, and a batch that fails with a 5xx is retried by clients forever.
    if not storable(value):
        raise _Bad(f"{key}: {TEXT_ERROR}")
    return value


def _value(raw: Any) -> float:
    if raw is None:
        return 1.0
    if type(raw) is float:
        value = raw
    elif type(raw) is int:
        try:
            value = float(raw)
        except OverflowError:
            raise _Bad("value: must be a finite number") from None
    else:
        raise _Bad("value: must be a number")
    if not math.isfinite(value):
        raise _Bad("value: must be a finite number")
    return value


def _timestamp(raw: Any, now: datetime, latest: datetime) -> datetime:
    if raw is None:
        return now
    if type(raw) is not str:
        raise _Bad("timestamp: must be an ISO-8601 date-time string")
    try:
        ts = datetime.fromisoformat(raw)
        ts = ts.replace(tzinfo=_UTC) if ts.tzinfo is None else ts.astimezone(_UTC)  # naive means UTC
    except (ValueError, OverflowError):  # overflow: an offset pushes year 1 or 9999 out of range
        raise _Bad("timestamp: must be an ISO-8601 date-time, e.g. 2024-05-01T12:00:00Z") from None
    if ts > latest:
        raise _Bad(f"timestamp: more than {int(MAX_FUTURE.total_seconds() // 60)} minutes in the future")
    return ts


def _row(event: Any, now: datetime, latest: datetime) -> Row:
    """The :data:`COLUMNS` of one JSON event, or :class:`_Bad` naming the first bad field."""
    if type(event) is not dict:
        raise _Bad("event: must be a JSON object")
    if not EVENT_FIELDS.issuperset(event):
        unknown = sorted(set(event) - EVENT_FIELDS)
        if not all(storable(key) for key in unknown):  # never echo such a name back
            raise _Bad(f"event: {KEY_ERROR}")
        raise _Bad(f"{unknown[0]}: unknown field")
    return (
        _text(event, "event_id", True),
        _text(event, "unit_id", True),
        _text(event, "name", True),
        _value(event.get("value")),
        _timestamp(event.get("timestamp"), now, latest),
        _text(event, "request_id", False),
        _text(event, "experiment", False),
    )


def validate_events(body: Any, now: datetime | None = None) -> tuple[list[Row], list[Rejection]]:
    """Split a request body into rows (tuples of :data:`COLUMNS`) and per-event rejections.

    Raises :class:`ValidationError` (422) when the body is not ``{"events": [...]}`` and
    :class:`PayloadTooLarge` (413) above :data:`MAX_BATCH`; both refuse the whole batch.
    """
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object with an 'events' list")
    unknown = sorted(set(body) - {"events"})
    if unknown:
        if not all(storable(key) for key in unknown):
            raise ValidationError("body", KEY_ERROR)
        raise ValidationError(unknown[0], "unknown field")
    events = body.get("events")
    if events is None:
        raise ValidationError("events", "is required")
    if not isinstance(events, list):
        raise ValidationError("events", "must be a list")
    if len(events) > MAX_BATCH:
        raise PayloadTooLarge(f"events: at most {MAX_BATCH} events per batch, got {len(events)}",
                              details={"field": "events", "max_batch": MAX_BATCH})
    now = now or datetime.now(_UTC)
    latest = now + MAX_FUTURE
    rows: list[Row] = []
    rejected: list[Rejection] = []
    for index, event in enumerate(events):
        try:
            rows.append(_row(event, now, latest))
        except _Bad as exc:
            rejected.append(Rejection(index, str(exc)))
    return rows, rejected


class EventStore:
    """Writes validated rows with one idempotent bulk insert per batch, in one transaction.

    Both statements are built once and reused, so SQLAlchemy's compiled cache serves every
    batch, and both are ``INSERT ... ON CONFLICT (event_id) DO NOTHING RETURNING event_id``:

    * PostgreSQL: ``INSERT ... SELECT ... FROM jsonb_array_elements(:rows)``, the whole batch
      as one JSON parameter. SQLAlchemy's "insertmanyvalues" would render a multi-row
      ``VALUES`` list with 4,000 placeholders for 500 events, and psycopg re-parses a query
      that long on every call (it caches short queries only): ~100 ms of Python per batch.
      One array parameter per column (``unnest``) fixes that but psycopg dumps arrays in
      Python (~7 ms per batch); ``json.dumps`` is C (~3 ms including the insert).
    * SQLite: the multi-row ``VALUES`` form, which "insertmanyvalues" renders as one
      statement per 1,000 rows (:data:`MAX_BATCH` never needs a second).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.postgres = db.dialect == "postgresql"
        self._stmt = _pg_statement() if self.postgres else _sqlite_statement()

    def insert(self, rows: list[Row], received_at: datetime | None = None) -> int:
        """Insert ``rows`` (tuples of :data:`COLUMNS`); returns how many were new."""
        if not rows:
            return 0
        received_at = received_at or datetime.now(_UTC)
        # Concurrent batches sharing event_ids (a resend racing its original on another
        # worker) take the unique index's row locks in one global order: no deadlocks.
        rows = sorted(rows, key=_event_id)
        if self.postgres:
            params: Any = {"rows": [(e, u, n, v, ts.isoformat(), r, x) for e, u, n, v, ts, r, x in rows],
                           "received_at": received_at}
        else:
            params = [dict(zip(COLUMNS, row), received_at=received_at) for row in rows]
        with self.db.engine.begin() as conn:
            return len(conn.execute(self._stmt, params).all())


_event_id = itemgetter(0)


def _pg_statement() -> Insert:
    table = Event.__table__
    element = func.jsonb_array_elements(bindparam("rows", type_=JSONB)).table_valued("value").render_derived(name="r")
    fields = [element.c.value.op("->>")(literal_column(str(i))) for i in range(len(COLUMNS))]
    fields[3] = cast(fields[3], Float)
    fields[4] = cast(fields[4], DateTime(timezone=True))
    select_ = select(*fields, bindparam("received_at", type_=DateTime(timezone=True)))
    stmt = pg_insert(table).from_select([*COLUMNS, "received_at"], select_)
    return stmt.on_conflict_do_nothing(index_elements=["event_id"]).returning(table.c.event_id)


def _sqlite_statement() -> Insert:
    table = Event.__table__
    stmt = sqlite_insert(table).on_conflict_do_nothing(index_elements=["event_id"])
    return stmt.returning(table.c.event_id)


def ingest(store: EventStore, body: Any, now: datetime | None = None) -> IngestResult:
    """Validate and store one ``POST /v1/events`` body."""
    now = now or datetime.now(_UTC)
    rows, rejected = validate_events(body, now)
    accepted = store.insert(rows, received_at=now)
    return IngestResult(accepted=accepted, duplicates=len(rows) - accepted, rejected=rejected)
