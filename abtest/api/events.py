"""POST /v1/events: ingest a batch of client events (sdk scope), idempotent by event_id."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy.exc import OperationalError

from ..errors import ServiceUnavailable
from ..services.events import EventStore, ingest
from .common import json_body, requires, services

__all__ = ["bp"]

bp = Blueprint("events", __name__, url_prefix="/v1")

_STORE_KEY = "abtest.events"


def _store() -> EventStore:
    """One :class:`EventStore` per app, built on first use (its statement is reused)."""
    store = current_app.extensions.get(_STORE_KEY)
    if store is None:
        store = current_app.extensions[_STORE_KEY] = EventStore(services().db)
    return store


@bp.post("/events")
@requires("sdk")
def events() -> Response:
    """202 with ``{"accepted", "duplicates", "rejected": [{"index", "error"}]}``.

    202 rather than 200 or 201: the batch is acknowledged as a whole even when some of
    its events were rejected or already stored, and the counts say which. A database that
    cannot be reached is a 503 with ``Retry-After``: clients resend the same batch later,
    which is safe whatever the failed transaction did, since event_ids are unique.
    """
    try:
        result = ingest(_store(), json_body(per_item=True))
    except OperationalError as exc:  # database down or locked; a resend is safe (idempotent)
        raise ServiceUnavailable("the event store is unavailable; retry the batch", retry_after=1) from exc
    response = jsonify(result.to_dict())
    response.status_code = 202
    return response
