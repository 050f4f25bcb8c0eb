"""Guardrails with auto-stop: pause the treatment when a guardrail metric is confidently harmed.

``check_guardrails(db, key)`` computes only the experiment's guardrail metrics (default
``error_rate`` and ``latency_p99_ms``) with the report's queries and evaluates them with the
*sequential* (always-valid) relative CI, so it may run on every tick of a scheduler without
inflating false alarms. A guardrail is breached when the CI lies entirely on the harmful side
beyond the metric's ``margin`` (relative; 0 = any confident harm), the rule of
:func:`abtest.stats.guardrail_status`.

On a breach, :func:`abtest.services.experiments.pause_treatment` in one transaction:
``treatment_paused = True`` (assignment then sends treatment traffic to control), the
``version``/``updated_at`` bump, and an audit entry ``guardrail_breach`` whose ``reason``
carries the numbers. The report shows the pause and the
reason. A paused, stopped or not-running experiment is not checked again. Scheduling (Celery
beat or the embedded loop) calls these plain functions; ``check_all_running`` covers every
running experiment and isolates failures per experiment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from ..db import Database
from ..models import Experiment
from ..reports.build import BREACH_ACTION, ReportOptions, build_report
from ..reports.model import Report
from ..reports.specs import metric_specs
from ..validation.experiments import DEFAULT_GUARDRAILS
from .experiments import get_experiment, pause_treatment

__all__ = ["GuardrailCheck", "check_guardrails", "check_all_running", "ACTION"]

log = logging.getLogger(__name__)
ACTION = BREACH_ACTION


@dataclass(frozen=True)
class GuardrailCheck:
    """Outcome for one experiment: statuses per (variant, metric), and whether it paused now."""

    experiment: str
    checked: bool
    statuses: tuple[dict[str, Any], ...] = ()
    breaches: tuple[dict[str, Any], ...] = ()
    paused: bool = False
    reason: str | None = None
    skipped: str | None = None
    errors: tuple[str, ...] = field(default=())


def _guardrail_names(exp: Experiment) -> tuple[str, ...]:
    names = tuple(s.name for s in metric_specs(exp) if s.role == "guardrail")
    return names or DEFAULT_GUARDRAILS


def _numbers(report: Report, metric: str, variant: str) -> dict[str, Any]:
    """The figures behind a breach; ``basis`` names the CI the rule used
    (see :func:`abtest.stats.metric_evidence`)."""
    m = report.metric(metric)
    c = m.comparison(variant)
    seq_abs, seq_rel = c.sequential.absolute, c.sequential.relative
    pick = (lambda e, name: getattr(e, name) if e is not None else None)
    return {"metric": metric, "variant": variant, "margin": m.margin,
            "basis": "relative" if m.margin > 0 else "absolute",
            "control": c.control_estimate, "treatment": c.treatment_estimate,
            "absolute": pick(seq_abs, "estimate"),
            "absolute_sequential_ci": [pick(seq_abs, "ci_lower"), pick(seq_abs, "ci_upper")],
            "relative": pick(seq_rel, "estimate"),
            "relative_sequential_ci": [pick(seq_rel, "ci_lower"), pick(seq_rel, "ci_upper")],
            "sequential_p_value": c.sequential.p_value}


def _reason(breaches: list[dict[str, Any]]) -> str:
    parts = []
    for b in breaches:
        if b["basis"] == "relative":
            lo, hi = b["relative_sequential_ci"]
            ci = f"relative {b['relative']:+.2%}, always-valid 95% CI [{lo:+.2%}, {hi:+.2%}], margin {b['margin']:.2%}"
        else:
            lo, hi = b["absolute_sequential_ci"]
            ci = f"difference {b['absolute']:+.4g}, always-valid 95% CI [{lo:+.4g}, {hi:+.4g}]"
        parts.append(f"{b['metric']} of {b['variant']} is {b['treatment']:.4g} vs {b['control']:.4g} "
                     f"in control ({ci})")
    return "guardrail breached: " + "; ".join(parts)


def check_guardrails(db: Database, experiment_key: str, actor: str = "guardrail-monitor",
                     now: datetime | None = None) -> GuardrailCheck:
    """Evaluate the guardrails of one experiment; pause its treatment on a breach."""
    with db.session() as session:
        exp = get_experiment(session, experiment_key)
        if exp.status != "running":
            return GuardrailCheck(experiment_key, False, skipped=f"experiment is {exp.status}")
        if exp.treatment_paused:
            return GuardrailCheck(experiment_key, False, skipped="treatment already paused")
        names = _guardrail_names(exp)
        report = build_report(session, experiment_key, ReportOptions(metrics=names, now=now))
    statuses, breaches = [], []
    for rec in report.recommendations:
        for g in rec.guardrails:
            statuses.append({"variant": rec.variant, "metric": g.metric, "status": g.status})
            if g.status == "breached":
                breaches.append(_numbers(report, g.metric, rec.variant))
    if not breaches:
        return GuardrailCheck(experiment_key, True, tuple(statuses))
    reason = _reason(breaches)
    paused = _pause(db, experiment_key, actor, reason, breaches, report.experiment.phase)
    return GuardrailCheck(experiment_key, True, tuple(statuses), tuple(breaches), paused, reason)


def _pause(db: Database, key: str, actor: str, reason: str, breaches: list[dict[str, Any]],
           phase: int) -> bool:
    """Pause through the experiments service, in one transaction (row locked)."""
    with db.transaction() as session:
        exp = get_experiment(session, key, for_update=True)
        paused = pause_treatment(session, exp, actor, reason, action=ACTION,
                                 details={"phase": phase, "breaches": breaches})
    if paused:
        log.warning("experiment %s: %s; treatment paused", key, reason)
    return paused  # False: someone else acted in the meantime


def check_all_running(db: Database, actor: str = "guardrail-monitor") -> list[GuardrailCheck]:
    """Check every running experiment; one experiment's failure does not stop the others."""
    with db.session() as session:
        keys = list(session.scalars(select(Experiment.key).where(
            Experiment.status == "running", Experiment.treatment_paused.is_(False)).order_by(Experiment.id)))
    results = []
    for key in keys:
        try:
            results.append(check_guardrails(db, key, actor))
        except Exception as exc:  # noqa: BLE001 - isolate failures per experiment
            log.exception("guardrail check of %s failed", key)
            results.append(GuardrailCheck(key, False, errors=(f"{type(exc).__name__}: {exc}",)))
    return results
