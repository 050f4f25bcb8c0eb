"""The console's blueprint and what every page shares: the signed-in check, CSRF on every POST,
the headers of its pages, its error pages, and :func:`page` (HTML, or the same data as JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, g, jsonify, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError

from ..api.common import services
from ..errors import ABTestError, Forbidden
from ..services.console_sessions import is_signed_out
from ..services.keys import Principal, key_by_id

__all__ = ["bp", "page", "principal", "CONSOLE_CSP", "SIGNED_IN_SCOPES"]

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static", static_url_path="/static")

# Scripts and styles from the app only; inline style attributes (the report's SVG) allowed.
CONSOLE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SIGNED_IN_SCOPES = ("admin", "viewer")
_OPEN = frozenset({"console.signin", "console.static"})  # reachable signed out
_VIEWER_POSTS = frozenset({"console.signout", "console.planner"})  # the POSTs a viewer key may make (they change nothing)


def principal() -> Principal:
    """Who is signed in (set by the blueprint's check before every view)."""
    found: Principal = g.console_principal
    return found


def wants_json() -> bool:
    return request.args.get("format") == "json"


def page(template: str, data: Mapping[str, Any], status: int = 200, **extra: Any) -> Any:
    """``template`` rendered with ``data`` (and ``extra``: forms and other things only the page
    needs), or ``data`` itself as JSON under ``?format=json``."""
    if wants_json():
        response = jsonify(dict(data))
        response.status_code = status
        return response
    return render_template(template, **data, **extra), status


@bp.before_request
def _check() -> Response | None:
    if request.method == "POST":
        from . import csrf

        csrf.protect()  # a missing or wrong token is a 400 (CSRFError), before anything else
    if request.endpoint in _OPEN:
        return None
    key_id, digest, sid = session.get("key_id"), session.get("key_hash"), session.get("sid")
    row = None
    if isinstance(key_id, int) and isinstance(digest, str) and isinstance(sid, str):
        with services().db.session() as db:
            row = None if is_signed_out(db, sid) else key_by_id(db, key_id, digest)
    if row is None or row.scope not in SIGNED_IN_SCOPES:  # never signed in, expired, signed out, revoked
        session.clear()
        if wants_json() or request.method != "GET":
            response = jsonify({"error": {"code": "unauthorized", "message": "sign in to the console first",
                                          "details": {"signin": url_for("console.signin")}}})
            response.status_code = 401
            return response
        return redirect(url_for("console.signin", next=request.full_path if request.args else request.path))
    g.console_principal = Principal(row.name, row.scope)
    g.console_key_id = row.id
    if request.method == "POST" and request.endpoint not in _VIEWER_POSTS and not principal().allows("admin"):
        raise Forbidden(f"this key's scope {row.scope!r} can look but not change anything")
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    # same-origin, not the API's no-referrer: over HTTPS the CSRF check also wants the form's
    # page as Referer (Flask-WTF's strict SSL check), which no-referrer would withhold
    response.headers["Referrer-Policy"] = "same-origin"
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = CONSOLE_CSP
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_context_processor
def _globals() -> dict[str, Any]:
    who = g.get("console_principal")
    return {"who": who, "can_change": who is not None and who.allows("admin")}


@bp.errorhandler(CSRFError)
def _csrf(exc: CSRFError) -> Response | str:
    return _error_page(400, "bad_request", f"the form is missing its security token or it is stale "
                                           f"({exc.description}); reload the page and try again")


@bp.errorhandler(ABTestError)
def _abtest(exc: ABTestError) -> Response | str:
    return _error_page(exc.status, exc.code, exc.message)


def _error_page(status: int, code: str, message: str) -> Response | str:
    if wants_json() or request.accept_mimetypes.best == "application/json":
        response = jsonify({"error": {"code": code, "message": message, "details": None}})
        response.status_code = status
        return response
    return render_template("console/error.html", status=status, code=code, message=message), status  # type: ignore[return-value]
