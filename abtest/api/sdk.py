"""Endpoints for locally evaluating SDKs (sdk scope).

``GET /v1/sdk/definitions``
    The definitions document (:mod:`abtest.services.definitions`). ``ETag`` is its version;
    a request whose ``If-None-Match`` carries it gets 304 and no body. ``X-Refresh-Interval``
    says how often clients should ask again (seconds).
``GET /v1/sdk/definitions/stream``
    Server-sent events: ``event: definitions`` with ``{"version": ...}`` at once and whenever
    the version changes (checked every ``definitions_push_check_s``), ``: keep-alive``
    comments in between; the stream ends after ``max_s`` seconds (query, default 300, at most
    3600) and clients reconnect, so no server thread is held forever.
``POST /v1/exposures``
    Exposures of local assignments, idempotent by ``exposure_id``
    (:mod:`abtest.services.exposures`); 202 with the same counts as ``POST /v1/events``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, request
from sqlalchemy.exc import OperationalError

from ..errors import ServiceUnavailable, ValidationError
from ..services.exposures import ingest_exposures
from .common import json_body, requires, services

__all__ = ["bp"]

bp = Blueprint("sdk", __name__, url_prefix="/v1")

KEEP_ALIVE_S = 15.0


@bp.get("/sdk/definitions")
@requires("sdk")
def definitions() -> Response:
    svc = services()
    version, body = svc.definitions.current()
    headers = {"ETag": f'"{version}"', "X-Refresh-Interval": f"{svc.settings.definitions_refresh_s:g}",
               "Cache-Control": "no-cache"}
    if version in request.if_none_match:
        return Response(status=304, headers=headers)
    return Response(body, status=200, mimetype="application/json", headers=headers)


@bp.get("/sdk/definitions/stream")
@requires("sdk")
def stream() -> Response:
    raw = request.args.get("max_s", "300")
    try:
        max_s = float(raw)
    except ValueError:
        raise ValidationError("max_s", "must be a number of seconds") from None
    if not 0 < max_s <= 3600:
        raise ValidationError("max_s", "must be in (0, 3600]")
    svc = services()
    check_s = svc.settings.definitions_push_check_s

    def events() -> Iterator[str]:
        sent, quiet_since, end = None, time.monotonic(), time.monotonic() + max_s
        while time.monotonic() < end and not svc.closed:
            version, _ = svc.definitions.current()
            if version != sent:
                sent, quiet_since = version, time.monotonic()
                yield f"event: definitions\ndata: {json.dumps({'version': version})}\n\n"
            elif time.monotonic() - quiet_since >= KEEP_ALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            time.sleep(min(check_s, max(0.0, end - time.monotonic())))

    return Response(events(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@bp.post("/exposures")
@requires("sdk")
def exposures() -> Response:
    svc = services()
    try:
        result = ingest_exposures(svc.db, svc.configs.get, json_body(per_item=True))
    except OperationalError as exc:  # a resend is safe: exposure ids are unique
        raise ServiceUnavailable("the exposure store is unavailable; retry the batch", retry_after=1) from exc
    response = jsonify(result.to_dict())
    response.status_code = 202
    return response
