"""POST /v1/assign: which variant serves this unit (sdk scope)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..validation import Fields, check_json
from .common import json_body, requires, services

bp = Blueprint("assign", __name__, url_prefix="/v1")

ASSIGN_FIELDS = ("experiment", "unit_id", "attributes")


def read_unit(f: Fields) -> tuple[str, str, dict]:
    """The (experiment, unit_id, attributes) triple shared by /v1/assign and /v1/infer."""
    experiment, unit_id = f.str("experiment", max_len=100), f.str("unit_id", max_len=200)
    attributes = dict(f.obj("attributes", {}))
    check_json(attributes, "attributes")  # strings (keys too) storable, numbers finite
    return experiment, unit_id, attributes


@bp.post("/assign")
@requires("sdk")
def assign() -> Response:
    experiment, unit_id, attributes = read_unit(Fields(json_body(), ASSIGN_FIELDS))
    result, _ = services().assigner.assign(experiment, unit_id, attributes)
    return jsonify({
        "experiment": result.experiment, "variant": result.variant, "engine": result.engine,
        "in_experiment": result.in_experiment, "reason": result.reason,
    })
