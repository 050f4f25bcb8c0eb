"""HTTP API v1: blueprints, authentication, and the one error handler.

Every response gets hardening headers (one ``after_request`` hook, :func:`_harden`):
``X-Request-Id`` (see :func:`errors.request_id`), ``X-Content-Type-Options: nosniff`` and
``Referrer-Policy: no-referrer``; HTML responses (the report) also a Content-Security-Policy
that allows nothing but inline styles and ``data:`` images (the page has inline CSS and inline
SVG and no scripts) and forbids framing, plus ``X-Frame-Options: DENY``.
"""

from __future__ import annotations

from flask import Flask, Response

from ..services.ratelimit import FailureLimiter

from . import assign, errors, events, experiments, gate, health, infer, layers, openai, plan, prometheus, reports, sdk

__all__ = ["register", "HTML_CSP", "AUTH_FAILURES"]

HTML_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'self'")
AUTH_FAILURES = "abtest.auth_failures"  # app.extensions key of the failed-authentication limiter


def register(app: Flask) -> None:
    errors.init_app(app)
    gate.init_app(app)
    for module in (health, experiments, layers, assign, events, infer, openai, prometheus, reports, plan, sdk):
        app.register_blueprint(module.bp)
    settings = app.extensions["abtest"].settings
    app.extensions[AUTH_FAILURES] = FailureLimiter(settings.auth_fail_limit, settings.auth_fail_window_s)
    app.after_request(_harden)


def _harden(response: Response) -> Response:
    headers = response.headers
    headers["X-Request-Id"] = errors.request_id()
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if response.mimetype == "text/html":
        headers.setdefault("Content-Security-Policy", HTML_CSP)
        headers.setdefault("X-Frame-Options", "DENY")
    return response
