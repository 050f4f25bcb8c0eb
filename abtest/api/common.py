"""Helpers shared by the blueprints: services, the JSON body, and authentication."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, request

from ..app import Services
from ..errors import BadRequest, Forbidden, Unauthorized
from ..services.keys import Principal

F = TypeVar("F", bound=Callable[..., Any])


def services() -> Services:
    return current_app.extensions["abtest"]


def json_body() -> Any:
    """The request's JSON body; malformed JSON or a non-JSON body is a 400 naming the problem."""
    if not request.is_json:
        raise BadRequest("the body must be JSON (Content-Type: application/json)")
    data = request.get_json(silent=True)
    if data is None:
        raise BadRequest("the body is not valid JSON")
    return data


def requires(scope: str) -> Callable[[F], F]:
    """Authenticate ``Authorization: Bearer <key>`` and check the key's scope."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.principal = authenticate(scope)
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def authenticate(scope: str) -> Principal:
    header = request.headers.get("Authorization", "")
    kind, _, key = header.partition(" ")
    if kind.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    svc = services()
    principal = svc.keys.resolve(svc.db.session, key.strip())
    if principal is None:
        raise Unauthorized("invalid or revoked API key")
    if not principal.allows(scope):
        raise Forbidden(f"this key's scope {principal.scope!r} does not allow {scope!r} operations")
    return principal
