"""Before every request: stamp its arrival, and answer 503 at once while the database is down.

The arrival time is what ``latency_ms`` of an inference request counts from (the latency the
client felt inside the API); every response says how long the API held it, as
``Server-Timing: app;dur=<ms>`` (the rest of what a client waits is network and queueing). While the database probe says down, every endpoint that needs
the database answers 503 with ``Retry-After`` in well under a second instead of waiting on a
connection; ``/healthz`` (which says why), ``/metrics`` and ``/openapi.json`` still answer.
"""

from __future__ import annotations

import time

from flask import Flask, Response, request

from ..errors import ServiceUnavailable
from .common import services

__all__ = ["init_app", "arrived"]

_ALWAYS_OPEN = frozenset({"health.healthz", "health.openapi", "prometheus.metrics"})


def arrived() -> float:
    """``time.perf_counter()`` at the request's arrival."""
    return request.environ["abtest.arrived"]


def init_app(app: Flask) -> None:
    @app.before_request
    def _gate() -> None:
        request.environ.setdefault("abtest.arrived", time.perf_counter())
        if request.endpoint in _ALWAYS_OPEN:
            return
        probe = services().db_probe
        if not probe.up():
            raise ServiceUnavailable(f"the database is unreachable: {probe.reason()}", retry_after=1)

    @app.after_request
    def _timing(response: Response) -> Response:
        started = request.environ.get("abtest.arrived")
        if started is not None:
            response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
        return response
