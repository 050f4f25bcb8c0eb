"""Create and edit an experiment from the form: the payload goes through the JSON API's own
service functions (``create_experiment``, ``update_experiment``), in one transaction, so a
refused field writes nothing and its error is shown next to it.

An edit that would open a new phase (the variants' allocation of a started experiment changes:
every unit is re-randomized) is first rehearsed (:func:`abtest.services.experiments.rehearse_update`,
rolled back) and shown with a warning; it is applied only once the person confirms that phase.
"""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, request, url_for
from wtforms.fields.choices import SelectChoice

from ..api.common import services
from ..errors import ABTestError, Conflict, ValidationError
from ..services import experiments as svc_exp
from .blueprint import bp, page, principal
from .forms import ExperimentForm
from .payload import Payload, error_field, form_data, form_payload, rows_needed

__all__: list[str] = []


def _engines() -> list[str]:
    return sorted(services().is_engine.specs())


def _form(data: Any = None, rows: tuple[int, int] | None = None) -> ExperimentForm:
    form = ExperimentForm(formdata=data) if data is not None else ExperimentForm()
    variants, metrics = rows or (0, 0)
    while len(form.variants.entries) < variants:
        form.variants.append_entry()
    while len(form.metrics.entries) < metrics:
        form.metrics.append_entry()
    engines = _engines()
    for entry in form.variants.entries:
        entry.form.engine.choices = [SelectChoice("", "choose…"), *(SelectChoice(e, e) for e in engines)]
        entry.form.quality_reference.choices = [SelectChoice("", "none"), *(SelectChoice(e, e) for e in engines)]
    return form


def _errors(exc: ABTestError, payload: Payload, form: ExperimentForm) -> dict[str, str]:
    details = exc.details or {}
    path = details.get("field") if isinstance(details, dict) else None
    name = error_field(path, payload, form) if isinstance(path, str) else ""
    return {name or "_form": exc.message}


def _render(form: ExperimentForm, creating: bool, errors: dict[str, str], status: int = 200,
            key: str | None = None, phase_warning: str | None = None) -> Any:
    data = {"creating": creating, "key": key, "errors": errors, "phase_warning": phase_warning,
            "engines": _engines()}
    return page("console/form.html", data, status, form=form)


@bp.route("/new", methods=["GET", "POST"])
def new_experiment() -> Any:
    if request.method == "GET":
        return _render(_form(), True, {})
    form = _form(request.form)
    payload = form_payload(form, creating=True)
    if payload.bad_json:
        return _render(form, True, {payload.bad_json[0]: payload.bad_json[1]}, 422)
    svc = services()
    try:
        with svc.db.transaction() as session:
            exp = svc_exp.create_experiment(session, payload.body, principal().name, svc.is_engine)
            key = exp.key
    except (ValidationError, Conflict) as exc:
        return _render(form, True, _errors(exc, payload, form), exc.status)
    svc.definitions.invalidate()
    flash(f"Created {key} (a draft: start it from its page).")
    return redirect(url_for("console.experiment", key=key))


@bp.route("/experiments/<key>/edit", methods=["GET", "POST"])
def edit_experiment(key: str) -> Any:
    svc = services()
    if request.method == "GET":
        with svc.db.session() as session:
            view = svc_exp.experiment_view(svc_exp.get_experiment(session, key))
        if view["status"] == "stopped":
            raise Conflict(f"experiment {key!r} is stopped and can no longer change")
        return _render(_form(form_data(view, _engines()), rows_needed(view)), False, {}, key=key)
    form = _form(request.form)
    with svc.db.session() as session:
        current = svc_exp.experiment_view(svc_exp.get_experiment(session, key))
    payload = form_payload(form, creating=False, current=current)
    if payload.bad_json:
        return _render(form, False, {payload.bad_json[0]: payload.bad_json[1]}, 422, key=key)
    who = principal().name
    try:
        with svc.db.session() as session:
            before, after = svc_exp.rehearse_update(session, key, payload.body, who, svc.is_engine)
        new_phase = svc_exp.opens_new_phase(before, after)
        confirmed = form.confirm_new_phase.data and form.confirm_phase.data == str(after["phase"])
        if new_phase and not confirmed:
            form.confirm_phase.data = str(after["phase"])
            form.confirm_new_phase.data = False
            warning = (f"{key} has started, and this change of its variants opens phase {after['phase']}: every "
                       f"unit is re-randomized, and the report covers phase {after['phase']} only (the data of "
                       f"phase {before['phase']} is kept, never mixed in). Tick the box below and save again "
                       f"to go ahead.")
            return _render(form, False, {}, 409, key=key, phase_warning=warning)
        with svc.db.transaction() as session:
            exp = svc_exp.get_experiment(session, key, for_update=True)
            phase = exp.phase
            svc_exp.update_experiment(session, exp, payload.body, who, svc.is_engine)
            if exp.phase > phase and not new_phase:  # changed since the rehearsal
                raise Conflict(f"{key} changed meanwhile and this update now opens a new phase; save again")
    except (ValidationError, Conflict) as exc:
        return _render(form, False, _errors(exc, payload, form), exc.status, key=key)
    svc.configs.invalidate(key)
    svc.definitions.invalidate()
    flash(f"Saved {key}.")
    return redirect(url_for("console.experiment", key=key))
