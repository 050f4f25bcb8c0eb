"""Sign-in with an API key, and sign-out.

The session cookie holds the key's id, the first 16 hex digits of its SHA-256 (never the key)
and a random session id; :mod:`abtest.console.blueprint` checks them against the database on
each request. Signing out records the session id (:mod:`abtest.services.console_sessions`), so
a copy of the cookie is refused too. Failed
sign-ins count against the client's address like failed API authentications (429 beyond the
limit, :class:`abtest.services.ratelimit.FailureLimiter`).
"""

from __future__ import annotations

from flask import Response, current_app, redirect, render_template, request, session, url_for

from ..api import AUTH_FAILURES
from ..api.common import services
from .blueprint import SIGNED_IN_SCOPES, bp
from .forms import SignInForm, SignOutForm

__all__ = ["HASH_PREFIX_LEN"]

HASH_PREFIX_LEN = 16


def _safe_next(target: str | None) -> str:
    """Only a path inside the console (never another site) to go to after signing in."""
    if target and target.startswith("/console/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("console.experiments")


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> Response | str | tuple[str, int]:
    form = SignInForm()
    if request.method == "GET":
        form.next.data = request.args.get("next", "")
        return render_template("console/signin.html", form=form)
    failures = current_app.extensions.get(AUTH_FAILURES)
    client = request.remote_addr or "unknown"
    if failures is not None:
        failures.check(client)  # RateLimited (429) while this address is over the limit
    key = (form.key.data or "").strip()
    from ..services.console_sessions import new_session_id
    from ..services.keys import find_key, hash_key

    with services().db.session() as db:
        row = find_key(db, key) if key else None
    if row is None or row.scope not in SIGNED_IN_SCOPES:
        if failures is not None and row is None:
            failures.failed(client)
        message = ("an sdk key cannot sign in to the console: use an admin or viewer key" if row is not None
                   else "unknown or revoked API key")
        form.key.errors = [message]
        return render_template("console/signin.html", form=form), 401
    session.clear()
    session.permanent = True  # expires after ABTEST_CONSOLE_SESSION_HOURS
    session["key_id"], session["key_hash"] = row.id, hash_key(key)[:HASH_PREFIX_LEN]
    session["sid"] = new_session_id()
    return redirect(_safe_next(form.next.data))


@bp.post("/signout")
def signout() -> Response:
    SignOutForm()  # the token was checked before the view (every console POST)
    sid = session.get("sid")
    if isinstance(sid, str):
        from ..services.console_sessions import sign_out

        with services().db.transaction() as db:
            sign_out(db, sid, current_app.permanent_session_lifetime)
    session.clear()
    return redirect(url_for("console.signin"))
