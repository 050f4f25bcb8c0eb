"""The console's forms (Flask-WTF: every one carries a CSRF token).

The fields only collect what a person typed; they validate nothing themselves. The experiment
form becomes the JSON API's payload (:mod:`abtest.console.payload`) and the service checks it,
so the console accepts exactly what ``POST /v1/experiments`` accepts.
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    FieldList,
    Form,
    FormField,
    HiddenField,
    PasswordField,
    SelectField,
    StringField,
    SubmitField,
    TextAreaField,
)

from wtforms.fields.choices import SelectChoice

from ..services.keys import SCOPES
from ..validation.experiments import DECISIONS, METRIC_KINDS

__all__ = ["SignInForm", "SignOutForm", "ConfirmForm", "KeyForm", "RevokeForm", "ExperimentForm",
           "VARIANT_ROWS", "METRIC_ROWS"]

VARIANT_ROWS = 4  # at least this many variant rows (blank rows are ignored)
METRIC_ROWS = 5


class SignInForm(FlaskForm):
    key = PasswordField("API key", render_kw={"autocomplete": "off", "spellcheck": "false"})
    next = HiddenField()
    submit = SubmitField("Sign in")


class SignOutForm(FlaskForm):
    submit = SubmitField("Sign out")


class ConfirmForm(FlaskForm):
    """The confirm step of a lifecycle button (start, pause, resume the treatment, stop)."""

    reason = StringField("Reason (recorded in the audit log)")
    submit = SubmitField("Confirm")


class KeyForm(FlaskForm):
    name = StringField("Name (the audit log records it)")
    scope = SelectField("Scope", choices=[SelectChoice(s, s) for s in SCOPES], default="viewer")
    submit = SubmitField("Create key")


class RevokeForm(FlaskForm):
    key_id = HiddenField()
    submit = SubmitField("Revoke")


class VariantRow(Form):
    key = StringField("Key")
    engine = SelectField("Engine", choices=[], validate_choice=False)
    weight = StringField("Weight", render_kw={"inputmode": "decimal"})
    control = BooleanField("Control")
    shadow = BooleanField("Shadow")
    quality_reference = SelectField("Quality reference", choices=[], validate_choice=False)
    quality_min_agreement = StringField("Min. agreement", render_kw={"inputmode": "decimal"})


class MetricRow(Form):
    name = StringField("Name")
    event = StringField("Event")
    kind = SelectField("Kind", choices=[SelectChoice("", "—"), *(SelectChoice(k, k) for k in METRIC_KINDS)], validate_choice=False)
    role = SelectField("Role", choices=[SelectChoice(r, r) for r in ("primary", "secondary", "guardrail")],
                       default="secondary", validate_choice=False)
    direction = SelectField("Better when", choices=[SelectChoice("", "default"), SelectChoice("increase", "increase"),
                                                    SelectChoice("decrease", "decrease")], validate_choice=False)
    margin = StringField("Margin", render_kw={"inputmode": "decimal"})
    attribution_window_hours = StringField("Window (hours)", render_kw={"inputmode": "decimal"})
    test = SelectField("Test", choices=[SelectChoice("", "—"), SelectChoice("equivalence", "equivalence")], validate_choice=False)


class ExperimentForm(FlaskForm):
    key = StringField("Key")
    name = StringField("Name")
    hypothesis = TextAreaField("Hypothesis")
    owner = StringField("Owner")
    coverage = StringField("Coverage (0 to 1)", default="1", render_kw={"inputmode": "decimal"})
    layer = StringField("Layer (optional)")
    layer_share = StringField("Layer share (0 to 1)", render_kw={"inputmode": "decimal"})
    variants = FieldList(FormField(VariantRow), min_entries=VARIANT_ROWS)
    metrics = FieldList(FormField(MetricRow), min_entries=METRIC_ROWS)
    decision = SelectField("Decision policy", choices=[SelectChoice(d, d.replace("_", "-")) for d in DECISIONS],
                           default=DECISIONS[0], validate_choice=False)
    quality_sample = StringField("Quality sample (0 to 1; empty: none)",
                                 render_kw={"inputmode": "decimal"})
    sticky = BooleanField("Sticky assignments")
    cuped = BooleanField("CUPED variance reduction", default=True)
    cuped_lookback_days = StringField("CUPED lookback (days)", default="14", render_kw={"inputmode": "numeric"})
    targeting = TextAreaField("Targeting rules (JSON list)", default="[]")
    forced = TextAreaField("Forced units (JSON object: unit → variant)", default="{}")
    dimensions = TextAreaField("Segment dimensions (JSON list)", default="[]")
    start_at = StringField("Start at")
    stop_at = StringField("Stop at")
    ramp = TextAreaField("Coverage ramp (JSON list of {at, coverage})", default="[]")
    confirm_phase = HiddenField()
    confirm_new_phase = BooleanField("Yes, open the new phase and re-randomize every unit")
    submit = SubmitField("Save")


class PlanForm(FlaskForm):
    """The power planner: a metric given by its baseline, or taken from an experiment's history."""

    experiment = StringField("Experiment key")
    metric = StringField("Its metric")
    kind = SelectField("Metric kind", choices=[SelectChoice("binary", "binary"),
                                               SelectChoice("mean", "mean")],
                       default="binary", validate_choice=False)
    baseline = StringField("Baseline", render_kw={"inputmode": "decimal"})
    sd = StringField("Std. deviation", render_kw={"inputmode": "decimal"})
    test = SelectField("Test", choices=[SelectChoice("mde", "superiority"),
                                        SelectChoice("margin", "non-inferiority")],
                       default="mde", validate_choice=False)
    effect = StringField("MDE or margin", render_kw={"inputmode": "decimal"})
    relative = BooleanField("Relative", default=True)
    direction = SelectField("Better when", choices=[SelectChoice("", "default"),
                                                    SelectChoice("increase", "increase"),
                                                    SelectChoice("decrease", "decrease")],
                            default="", validate_choice=False)
    alpha = StringField("Alpha", default="0.05", render_kw={"inputmode": "decimal"})
    power = StringField("Power", default="0.8", render_kw={"inputmode": "decimal"})
    variants = StringField("Variants", default="2", render_kw={"inputmode": "numeric"})
    daily_units = StringField("Units a day", render_kw={"inputmode": "decimal"})
    coverage = StringField("Coverage", render_kw={"inputmode": "decimal"})
    submit = SubmitField("Plan")
