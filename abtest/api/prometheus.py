"""GET /metrics: this process's Prometheus metrics (text exposition format 0.0.4, no auth)."""

from __future__ import annotations

from flask import Blueprint, Response

from .common import services

bp = Blueprint("prometheus", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    body = services().inference.render_metrics()
    return Response(body, mimetype="text/plain; version=0.0.4")
