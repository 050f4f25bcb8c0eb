"""The power planner page: the units per variant and the days an experiment needs, before launch.

A thin view of :mod:`abtest.services.planner` (the service behind ``POST /v1/plan``): the form
becomes the same payload, the service checks it (an error names the field, shown beside it)
and computes the plan; ``?format=json`` gives the plan's JSON, as the API does.
"""

from __future__ import annotations

from typing import Any

from flask import request

from ..api.common import services
from ..errors import ABTestError, ValidationError
from ..services.planner import parse_plan_request, plan
from .blueprint import bp, page
from .forms import PlanForm
from .payload import number

__all__: list[str] = []

_FIELD_OF = {"mde": "effect", "margin": "effect", "variance": "sd"}  # payload field -> form field


def plan_payload(form: PlanForm) -> dict[str, Any]:
    """The ``POST /v1/plan`` body of the form: history when an experiment is named, else the
    given metric; blank fields are left to the service's defaults."""
    body: dict[str, Any] = {}
    if (form.experiment.data or "").strip():
        body["experiment"] = form.experiment.data.strip()
        body["metric"] = (form.metric.data or "").strip()
    else:
        body["kind"] = form.kind.data
        for name in ("baseline", "sd"):
            if (getattr(form, name).data or "").strip():
                body[name] = number(getattr(form, name).data)
    body["mde" if form.test.data != "margin" else "margin"] = number(form.effect.data)
    body["relative"] = bool(form.relative.data)
    if form.direction.data:
        body["direction"] = form.direction.data
    for name in ("alpha", "power", "variants", "daily_units", "coverage"):
        if (getattr(form, name).data or "").strip():
            body[name] = number(getattr(form, name).data)
    return body


@bp.route("/plan", methods=["GET", "POST"])
def planner() -> Any:
    form = PlanForm()
    result, errors, status = None, {}, 200
    if request.method == "POST":
        try:
            asked = parse_plan_request(plan_payload(form))
            if asked.experiment is None:
                result = plan(None, asked).to_json()
            else:
                with services().db.session() as session:
                    result = plan(session, asked).to_json()
        except ValidationError as exc:
            errors, status = {_FIELD_OF.get(exc.field, exc.field): exc.message}, exc.status
        except ABTestError as exc:  # an unknown experiment, a metric without history
            errors, status = {"experiment": exc.message}, exc.status
    return page("console/plan.html", {"plan": result, "errors": errors}, status, form=form)
