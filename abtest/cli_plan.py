"""``abtest plan``: the power planner (what ``POST /v1/plan`` computes) on the command line.

With ``--kind`` and ``--baseline`` the plan is computed locally; with ``--experiment`` and
``--metric`` the control's baseline, variance and traffic come from that experiment's history in
the database of the usual settings (``ABTEST_DATABASE_URL``). Exit status: 0 done; 2 bad input
(``field: message``, as the API's 422); 1 any other refusal (no such experiment).

Only click loads with the module, so ``abtest --help`` stays fast.
"""

from __future__ import annotations

import json
from typing import Any

import click

from . import cli_common as common
from .errors import ABTestError, ValidationError

__all__ = ["plan_command", "plan_text"]


def plan_text(body: dict[str, Any]) -> str:
    """The plan in a few lines: units, total and days, then what it was sized on."""
    test = "non-inferiority (one-sided)" if body["test"] == "non_inferiority" else "superiority (two-sided)"
    days = f"{body['days']} day(s) at {body['daily_units'] * (body['coverage'] or 1.0):,.1f} units a day" \
        if body["days"] is not None else "days unknown: give --daily-units"
    src = body["source"]
    origin = (f"control {src['control']!r} of {src['experiment']!r}, {src['control_units']} units"
              if src["type"] == "history" else "given")
    return "\n".join([
        f"{body['units_per_variant']:,} units per variant, {body['total_units']:,} in all; {days}",
        f"{test} at alpha {body['comparison_alpha']:g} per comparison ({body['comparisons']} treatment(s), "
        f"{body['correction']}), power {body['inputs']['power']:g}",
        f"{body['kind']} metric, baseline {body['baseline']:.6g}, per-unit variance {body['variance']:.6g} "
        f"({origin}); absolute effect {body['absolute_effect']:.6g} ({body['direction']})",
    ])


@click.command("plan")
@click.option("--kind", type=click.Choice(["binary", "mean"]), help="the metric's kind when its baseline is given")
@click.option("--baseline", type=float, help="the control's rate (binary, in (0, 1)) or mean (mean)")
@click.option("--sd", type=float, help="a mean metric's per-unit standard deviation")
@click.option("--variance", type=float, help="a mean metric's per-unit variance (instead of --sd)")
@click.option("--experiment", help="plan from this running experiment's history (with --metric)")
@click.option("--metric", help="the experiment's metric whose control baseline and variance are used")
@click.option("--mde", type=float, help="minimum detectable effect, superiority (two-sided)")
@click.option("--margin", type=float, help="non-inferiority margin (one-sided) instead of --mde")
@click.option("--absolute", is_flag=True, help="--mde/--margin in metric units (default: relative to the baseline)")
@click.option("--direction", type=click.Choice(["increase", "decrease"]),
              help="which way is better (default: the metric's, or increase)")
@click.option("--alpha", type=float, default=0.05, show_default=True,
              help="significance level, in (0, 0.5]; divided by the number of treatments")
@click.option("--power", type=float, default=0.8, show_default=True, help="target power, in (0.5, 1)")
@click.option("--variants", type=int, default=2, show_default=True, help="variants, the control included")
@click.option("--daily-units", type=float, help="units arriving per day before coverage (default: measured)")
@click.option("--coverage", type=float, help="share of the arriving units enrolled, in (0, 1]")
@click.option("--traffic-days", type=int, default=7, show_default=True,
              help="recent days over which an experiment's traffic is measured")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON instead of text")
def plan_command(kind: str | None, baseline: float | None, sd: float | None, variance: float | None,
                 experiment: str | None, metric: str | None, mde: float | None, margin: float | None,
                 absolute: bool, direction: str | None, alpha: float, power: float, variants: int,
                 daily_units: float | None, coverage: float | None, traffic_days: int, as_json: bool) -> None:
    """Units per variant and days an experiment needs to detect --mde (or show non-inferiority
    at --margin) on one metric: given --kind/--baseline, or from --experiment/--metric."""
    from .services.planner import parse_plan_request, plan

    payload = {"kind": kind, "baseline": baseline, "sd": sd, "variance": variance, "experiment": experiment,
               "metric": metric, "mde": mde, "margin": margin, "relative": not absolute, "direction": direction,
               "alpha": alpha, "power": power, "variants": variants, "daily_units": daily_units,
               "coverage": coverage, "traffic_days": traffic_days}
    try:
        request = parse_plan_request({k: v for k, v in payload.items() if v is not None})
        if request.experiment is None:
            result = plan(None, request)
        else:
            with common.database() as db, db.session() as session:
                result = plan(session, request)
    except ValidationError as exc:
        raise common.InputError(exc.message) from None
    except ABTestError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    body = result.to_json()
    click.echo(json.dumps(body, indent=2) if as_json else plan_text(body))
