"""POST /v1/infer (sdk scope): assign the unit and run its variant's engine."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..errors import PayloadTooLarge, ValidationError
from ..services.inference import InferParams
from ..validation import TEXT_ERROR, Fields, storable
from .assign import ASSIGN_FIELDS, read_unit
from .common import json_body, requires, services
from .gate import arrived

bp = Blueprint("infer", __name__)

MAX_PROMPT_CHARS = 32_768
MAX_NEW_TOKENS = 1024
INFER_FIELDS = (*ASSIGN_FIELDS, "prompt", "max_new_tokens", "temperature", "top_p", "seed", "stop")


def read_params(f: Fields) -> InferParams:
    prompt = f.str("prompt", max_len=10**9)
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PayloadTooLarge(f"prompt: at most {MAX_PROMPT_CHARS} characters (got {len(prompt)})",
                              details={"field": "prompt"})
    stop = f.list("stop", [], max_len=4)
    for i, s in enumerate(stop):
        if not isinstance(s, str) or not s or len(s) > 100:
            raise ValidationError(f"stop[{i}]", "must be a non-empty string of at most 100 characters")
        if not storable(s):
            raise ValidationError(f"stop[{i}]", TEXT_ERROR)
    return InferParams(
        prompt=prompt,
        max_new_tokens=f.num("max_new_tokens", 64, lo=1, hi=MAX_NEW_TOKENS, integer=True),
        temperature=float(f.num("temperature", 0.0, lo=0.0, hi=2.0)),
        top_p=float(f.num("top_p", 1.0, lo=1e-6, hi=1.0)),
        seed=f.num("seed", None, lo=0, hi=2**63 - 1, integer=True),
        stop=tuple(stop),
    )


@bp.post("/v1/infer")
@requires("sdk")
def infer() -> Response:
    f = Fields(json_body(), INFER_FIELDS)
    experiment, unit_id, attributes = read_unit(f)
    params = read_params(f)
    return jsonify(services().inference.infer(experiment, unit_id, attributes, params, arrived=arrived()))
