"""``abtest layers``: a layer's holdout share and its cumulative impact report, without the server.

The commands call the functions behind ``/v1/layers`` (:mod:`abtest.services.layers`,
:mod:`abtest.reports.holdout`) with the same validation, one transaction per write. Exit
status as for ``abtest experiments``: 0 done; 2 bad input, nothing written (``holdout: ...``,
``layer: ...``); 1 any other refusal (no such layer; a share change while an experiment of the
layer runs or is paused). Only click and the standard library load with the module.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from . import cli_common as common
from .config import Settings

__all__ = ["layers"]


def _line(view: dict[str, Any]) -> str:
    running = sum(e["status"] in ("running", "paused") for e in view["experiments"])
    return (f"{view['name']}\tholdout {view['holdout']:g}\t{len(view['experiments'])} experiments"
            + (f" ({running} started)" if running else ""))


@click.group("layers", short_help="Layer holdouts and their cumulative impact report.")
def layers() -> None:
    """Layers: the share of units all of a layer's experiments keep on the control (the
    holdout), and the report comparing it with the units the experiments enrolled."""


@layers.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON instead of text")
def list_(as_json: bool) -> None:
    """List layers (named by an experiment or with settings), one line each."""
    from .services import layers as svc

    with common.database(Settings.load()) as database, database.session() as session:
        views = svc.list_layers(session)
    if as_json:
        common.print_json({"layers": views})
        return
    if not views:
        click.echo("no layers", err=True)
    for view in views:
        click.echo(_line(view))


@layers.command("show")
@click.argument("name")
def show(name: str) -> None:
    """Show layer NAME as the API's JSON."""
    from .services import layers as svc

    with common.reported(), common.database(Settings.load()) as database, database.session() as session:
        common.print_json(svc.get_layer(session, name))


@layers.command("set-holdout")
@click.argument("name")
@click.argument("share", type=float)
@click.option("--actor", envvar="ABTEST_ACTOR", metavar="NAME",
              help="who makes the change, as the audit log records it (default: cli:<OS user>)")
def set_holdout(name: str, share: float, actor: str | None) -> None:
    """Set the holdout SHARE (0 to 0.5) of layer NAME.

    Refused while an experiment of the layer is running or paused: the share decides which
    units stay on the control, and may change only between experiments.

    \b
    Example:
      abtest layers set-holdout homepage 0.05
    """
    from .services import layers as svc

    with common.reported(), common.database(Settings.load()) as database, database.transaction() as session:
        view = svc.set_holdout(session, name, {"holdout": share}, common.actor(actor))
    click.echo(_line(view))


@layers.command("report")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["json", "html"]), default="json", show_default=True,
              help="json: the API's JSON; html: the page")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="file to write (default: stdout)")
@click.option("--alpha", type=click.FloatRange(0.0, 0.5, min_open=True, max_open=True), default=0.05,
              show_default=True, help="significance level of every CI and test")
def report(name: str, fmt: str, output: str | None, alpha: float) -> None:
    """Write the cumulative impact report of layer NAME (holdout vs exposed units)."""
    from .reports.holdout import build_layer_report
    from .reports.holdout_html import render_layer_html
    from .services import layers as svc

    with common.reported(), common.database(Settings.load()) as database, database.session() as session:
        body = build_layer_report(session, svc.get_layer(session, name), alpha)
    text = render_layer_html(body) if fmt == "html" else json.dumps(body, indent=2, ensure_ascii=False) + "\n"
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
        click.echo(f"{fmt} report of layer {name} written to {output}", err=True)
    else:
        sys.stdout.write(text)
