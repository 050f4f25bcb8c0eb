"""Helpers shared by the blueprints: services, the JSON body, and authentication."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, g, request

from ..container import Services
from ..errors import BadRequest, Forbidden, Unauthorized
from ..services.keys import Principal

F = TypeVar("F", bound=Callable[..., Any])


def services() -> Services:
    """The services container of this app (built by :func:`abtest.app.create_app`)."""
    found: Services = current_app.extensions["abtest"]
    return found


# Deepest nesting of objects and lists a body may have; the body itself is level 1. No
# payload of the API needs more than a few levels, and Python's parser fails with a
# RecursionError somewhere near 1,000.
MAX_JSON_DEPTH = 32
TOO_DEEP = f"the body is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
NOT_JSON_CONSTANT = "NaN and Infinity are not valid JSON"


class _NotJSONConstant(Exception):
    """Internal: the body holds NaN, Infinity or -Infinity (never escapes :func:`json_body`)."""


def _refuse_constant(name: str) -> Any:
    raise _NotJSONConstant(name)


def json_body(*, per_item: bool = False) -> Any:
    """The request's JSON body; malformed JSON or a non-JSON body is a 400 naming the problem.

    Parsed here rather than by ``request.get_json`` so that what Python's ``json`` accepts
    beyond JSON is refused: NaN/Infinity and nesting deeper than :data:`MAX_JSON_DEPTH`,
    which would otherwise be a RecursionError (500). ``per_item``: the endpoint validates the
    items of a batch one by one (POST /v1/events), so a NaN is left for it to reject that one
    item ("value: must be a finite number"), never the whole batch.
    """
    if not request.is_json:
        raise BadRequest("the body must be JSON (Content-Type: application/json)")
    try:
        data = json.loads(request.get_data(cache=True), parse_constant=None if per_item else _refuse_constant)
    except _NotJSONConstant:
        raise BadRequest(NOT_JSON_CONSTANT) from None
    except RecursionError:
        raise BadRequest(TOO_DEEP) from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4,300 digits
        raise BadRequest("the body is not valid JSON") from None
    if data is None:
        raise BadRequest("the body is not valid JSON")
    check_depth(data)
    return data


def check_depth(data: Any) -> None:
    """Raise :class:`BadRequest` if objects and lists in ``data`` nest deeper than :data:`MAX_JSON_DEPTH`.

    Iterative, one level at a time (no recursion); it looks at every value once, which is
    cheap next to parsing them.
    """
    level = [data] if type(data) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(TOO_DEEP)
        nested = []
        for container in level:
            for child in container.values() if type(container) is dict else container:
                if type(child) in _CONTAINERS:
                    nested.append(child)
        level = nested


_CONTAINERS = (dict, list)


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
    # Failed authentications are limited per client address (abtest.services.ratelimit): an
    # address over the limit gets 429 here, before any key lookup, whatever key it sends.
    failures = current_app.extensions.get("abtest.auth_failures")  # set by abtest.api.register
    client = request.remote_addr or "unknown"
    if failures is not None:
        failures.check(client)
    header = request.headers.get("Authorization", "").strip()
    kind, _, key = header.partition(" ")
    if kind.lower() != "bearer" or not key.strip():
        if failures is not None:
            failures.failed(client)
        if not header:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        raise Unauthorized("malformed Authorization header: it must be 'Bearer <key>'")
    svc = services()
    principal = svc.keys.resolve(svc.db.session, key.strip())
    if principal is None:
        if failures is not None:
            failures.failed(client)
        raise Unauthorized("invalid or revoked API key")
    if not principal.allows(scope):
        raise Forbidden(f"this key's scope {principal.scope!r} does not allow {scope!r} operations")
    return principal
