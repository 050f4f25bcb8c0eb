"""GET /healthz (no auth) and GET /openapi.json."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .common import services
from .openapi import openapi_document

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    svc = services()
    checks: dict[str, str] = {}
    try:
        svc.db.ping()
        checks["database"] = "ok"
    except Exception as exc:  # report, don't raise: health checks must always answer
        checks["database"] = f"error: {type(exc).__name__}"
    broker = svc.broker_health()
    if broker is not None:
        checks["broker"] = broker
    healthy = all(v == "ok" for v in checks.values())
    response = jsonify({"status": "ok" if healthy else "degraded", "checks": checks,
                        "mode": "embedded" if svc.settings.embedded else "celery"})
    response.status_code = 200 if healthy else 503
    return response


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())
