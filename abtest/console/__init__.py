"""The web console at ``/console/``: configure, launch, watch and decide experiments in a browser.

Server-rendered (Jinja2 templates and one small script, every asset served by the app), a client
of the same services as the JSON API (:mod:`abtest.services`, :mod:`abtest.reports`): no
analysis or validation here. Every page's data is also JSON (``?format=json``).

Sign-in takes an API key (``admin`` or ``viewer``; ``sdk`` keys cannot sign in) and keeps only the
key's id, a prefix of its hash and a session id in Flask's signed session cookie (``abtest_console``: HttpOnly,
SameSite=Lax, path ``/console``, ``ABTEST_CONSOLE_SESSION_HOURS`` long, Secure over TLS or with
``ABTEST_CONSOLE_SECURE_COOKIE``); each request checks the key again, so a revoked key is signed
out at once, and a signed-out session id is refused even from a copy of the cookie. Every form carries a CSRF token (Flask-WTF). The JSON API never reads the cookie.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from datetime import timedelta

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect

from ..config import Settings

__all__ = ["register", "COOKIE_NAME", "secret_key"]

COOKIE_NAME = "abtest_console"
csrf = CSRFProtect()


class _ConsoleSessions(SecureCookieSessionInterface):
    """Flask's signed cookie sessions, Secure also whenever the request itself came over TLS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def secret_key(settings: Settings) -> str:
    """``ABTEST_SECRET_KEY``, else the key kept in ``secret_key_file``, generated on first use.

    The file is written whole under a temporary name and linked into place, so processes
    starting together (gunicorn workers) agree on one key: a loser of the race reads the winner's.
    """
    if settings.secret_key:
        return settings.secret_key
    path = settings.secret_key_file
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".secret-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    with open(path) as f:
        key = f.read().strip()
    if not key:
        raise RuntimeError(f"the console's secret key file {path} is empty; delete it or set ABTEST_SECRET_KEY")
    return key


def register(app: Flask) -> None:
    """Configure the session cookie and CSRF, and mount the console's blueprint."""
    settings: Settings = app.extensions["abtest"].settings
    app.secret_key = secret_key(settings)
    app.session_interface = _ConsoleSessions()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME, SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/console", SESSION_COOKIE_SECURE=settings.console_secure_cookie,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.console_session_hours),
        # the console's blueprint checks CSRF on its own POSTs; the JSON API (Bearer keys, no
        # cookies) has nothing to forge
        WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_TIME_LIMIT=None,
    )
    csrf.init_app(app)
    from . import auth, editing, experiments, ops, planner  # noqa: F401 - their routes join the blueprint
    from .blueprint import bp

    app.register_blueprint(bp)
