"""POST /v1/plan (viewer or admin scope: it changes nothing): the power planner's units and days for one metric.

The body is a :class:`~abtest.services.planner.PlanRequest` as JSON (see
:mod:`abtest.services.planner` and docs/statistics.md); a bad field is a 422 naming it, an
unknown experiment a 404. The reply is the :class:`~abtest.services.planner.Plan`'s JSON.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response

from ..services.planner import parse_plan_request, plan
from .common import json_body, requires, services

bp = Blueprint("plan", __name__, url_prefix="/v1")


@bp.post("/plan")
@requires("viewer")
def create_plan() -> Response:
    request = parse_plan_request(json_body())
    if request.experiment is None:
        result = plan(None, request)
    else:
        with services().db.session() as session:
            result = plan(session, request)
    # Not jsonify: the plan's key order (units and days first) is documented.
    return Response(json.dumps(result.to_json(), ensure_ascii=False) + "\n", mimetype="application/json")
