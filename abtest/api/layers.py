"""/v1/layers: layer settings (the holdout share) and the cumulative impact report (admin scope).

``PUT /v1/layers/<name>`` ``{"holdout": 0.05}`` sets the share of the layer's units that every
experiment of the layer keeps on its control (409 while one of them is running or paused);
``GET /v1/layers`` and ``GET /v1/layers/<name>`` show layers with their experiments;
``GET /v1/layers/<name>/report`` (``?format=html`` for a page, ``?alpha=``) compares the
holdout with the units the layer's experiments enrolled (:mod:`abtest.reports.holdout`).
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, g, jsonify, request

from ..errors import ValidationError
from ..reports.holdout import build_layer_report
from ..reports.holdout_html import render_layer_html
from ..services import layers as svc_layers
from .common import json_body, requires, services
from .reports import _float_arg

bp = Blueprint("layers", __name__, url_prefix="/v1/layers")

FORMATS = ("json", "html")


@bp.get("")
@requires("admin")
def list_() -> Response:
    with services().db.session() as session:
        return jsonify({"layers": svc_layers.list_layers(session)})


@bp.get("/<name>")
@requires("admin")
def show(name: str) -> Response:
    with services().db.session() as session:
        return jsonify(svc_layers.get_layer(session, name))


@bp.put("/<name>")
@requires("admin")
def put(name: str) -> Response:
    payload = json_body()
    svc = services()
    with svc.db.transaction() as session:
        view = svc_layers.set_holdout(session, name, payload, g.principal.name)
    svc.configs.invalidate()  # every experiment of the layer assigns under the new share
    svc.definitions.invalidate()
    return jsonify(view)


@bp.get("/<name>/report")
@requires("admin")
def report(name: str) -> Response:
    fmt = request.args.get("format", "json")
    if fmt not in FORMATS:
        raise ValidationError("format", f"must be one of {', '.join(FORMATS)}")
    alpha = _float_arg("alpha", 0.05, 0.0, 0.5) or 0.05
    with services().db.session() as session:
        body = build_layer_report(session, svc_layers.get_layer(session, name), alpha)
    if fmt == "html":
        return Response(render_layer_html(body), mimetype="text/html")
    return Response(json.dumps(body, ensure_ascii=False) + "\n", mimetype="application/json")
