"""/v1/experiments: configure experiments (admin scope; a viewer key may list, show and read the
audit log). One transaction per write."""

from __future__ import annotations

import functools

from flask import Blueprint, Response, g, jsonify, request

from ..errors import ValidationError
from ..services import experiments as svc_exp
from .common import json_body, requires, services

bp = Blueprint("experiments", __name__, url_prefix="/v1/experiments")

# Set once, at creation (key, layer, layer_share): a PATCH naming one is refused as such.


def _reply(body: object, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


@bp.post("")
@requires("admin")
def create() -> Response:
    payload = json_body()
    svc = services()
    with svc.db.transaction() as session:
        exp = svc_exp.create_experiment(session, payload, g.principal.name, svc.is_engine)
        view = svc_exp.experiment_view(exp)
    svc.definitions.invalidate()
    return _reply(view, 201)


@bp.get("")
@requires("viewer")
def list_() -> Response:
    status = request.args.get("status")
    if status is not None and status not in ("draft", "running", "paused", "stopped"):
        raise ValidationError("status", "must be one of draft, running, paused, stopped")
    with services().db.session() as session:
        items = [svc_exp.experiment_view(e) for e in svc_exp.list_experiments(session, status)]
    return _reply({"experiments": items})


@bp.get("/<key>")
@requires("viewer")
def show(key: str) -> Response:
    with services().db.session() as session:
        return _reply(svc_exp.experiment_view(svc_exp.get_experiment(session, key)))


@bp.patch("/<key>")
@requires("admin")
def update(key: str) -> Response:
    payload = json_body()
    svc = services()
    with svc.db.transaction() as session:
        exp = svc_exp.get_experiment(session, key, for_update=True)
        svc_exp.update_experiment(session, exp, payload, g.principal.name, svc.is_engine)
        view = svc_exp.experiment_view(exp)
    svc.configs.invalidate(key)
    svc.definitions.invalidate()
    return _reply(view)


def _transition(key: str, *, action: str) -> Response:
    svc = services()
    with svc.db.transaction() as session:
        exp = svc_exp.get_experiment(session, key, for_update=True)
        svc_exp.transition(session, exp, action, g.principal.name)
        view = svc_exp.experiment_view(exp)
    svc.configs.invalidate(key)
    svc.definitions.invalidate()
    return _reply(view)


for _action in svc_exp.TRANSITIONS:  # POST /<key>/start, /<key>/pause, /<key>/stop
    bp.add_url_rule(f"/<key>/{_action}", _action, requires("admin")(functools.partial(_transition, action=_action)),
                    methods=["POST"])


@bp.get("/<key>/audit")
@requires("viewer")
def audit(key: str) -> Response:
    with services().db.session() as session:
        exp = svc_exp.get_experiment(session, key)
        return _reply({"experiment": key, "entries": svc_exp.audit_entries(session, exp)})
