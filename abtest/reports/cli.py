"""``abtest report KEY --format json|html|csv|text -o FILE``: the report without the HTTP server.

Reads the database of the usual settings (``ABTEST_DATABASE_URL``); writes to ``FILE`` or,
without ``-o``, to standard output. ``text`` is a console summary (:mod:`abtest.reports.text`);
``--phase N`` reads an earlier phase's results. Only click is imported at module level, so mounting the
command keeps ``abtest --help`` fast.
"""

from __future__ import annotations

import json
import sys

import click

from ..config import Settings
from ..errors import ABTestError

__all__ = ["report"]


@click.command("report")
@click.argument("key")
@click.option("--format", "fmt", type=click.Choice(["json", "html", "csv", "text"]), default="json", show_default=True,
              help="json: the API's JSON; html: the page; csv: the results table; text: a console summary")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="file to write (default: stdout)")
@click.option("--cap", type=click.FloatRange(0.5, 1.0, min_open=True, max_open=True),
              help="winsorize latency at this pooled quantile level, e.g. 0.99")
@click.option("--alpha", type=click.FloatRange(0.0, 0.5, min_open=True, max_open=True), default=0.05,
              show_default=True, help="significance level of every CI and test (0.05: 95 % intervals)")
@click.option("--mde", type=click.FloatRange(0.0, min_open=True), default=0.05, show_default=True,
              help="relative minimum detectable effect for the power plan")
@click.option("--phase", type=click.IntRange(min=1), default=None,
              help="read this earlier phase's results (default: the current phase)")
def report(key: str, fmt: str, output: str | None, cap: float | None, alpha: float, mde: float,
           phase: int | None) -> None:
    """Write the results report of experiment KEY."""
    # Imported here so that `abtest --help` does not load scipy and SQLAlchemy.
    from ..db import Database
    from .build import ReportOptions, build_report
    from .csv import render_csv
    from .html import render_html
    from .text import render_text

    db = Database(Settings.load().database_url)
    try:
        with db.session() as session:
            body = build_report(session, key, ReportOptions(alpha=alpha, cap=cap, mde=mde, histogram=fmt == "html",
                                                            phase=phase))
    except ABTestError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from exc
    finally:
        db.dispose()
    text = {"json": lambda r: json.dumps(r.to_json(), indent=2) + "\n", "html": render_html,
            "csv": render_csv, "text": render_text}[fmt](body)
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
        click.echo(f"{fmt} report of {key} written to {output}: {body.recommendation.action}", err=True)
    else:
        sys.stdout.write(text)
