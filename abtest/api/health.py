"""GET /healthz (no auth) and GET /openapi.json."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .common import services
from .openapi import openapi_document

bp = Blueprint("health", __name__)


# Engine states that serve (idle: embedded mode, loaded on first use).
SERVING = frozenset({"ready", "idle"})


@bp.get("/healthz")
def healthz() -> Response:
    """200 when ready for traffic (``status`` "ok", or "degraded" when an engine is not ready:
    failing to load, or no worker consuming its queue), else 503 (``status`` "unavailable")
    naming what is not: the database or broker down, an engine still loading. Answered from the
    dependency probes, the engines' states and the workers' heartbeats (cached), so it never
    waits on a dependency that hangs."""
    svc = services()
    ready, checks = svc.health()
    degraded = any(state not in SERVING for state in checks.get("engines", {}).values())
    status = "ok" if ready and not degraded else ("degraded" if ready else "unavailable")
    response = jsonify({"status": status, "checks": checks, "mode": "embedded" if svc.settings.embedded else "celery"})
    response.status_code = 200 if ready else 503
    return response


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())
