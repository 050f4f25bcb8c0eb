"""Experiment reports: sufficient statistics in SQL, analysis by :mod:`abtest.stats`, and the
JSON, HTML and CSV renderings (no Flask here; ``abtest.api.reports`` serves them).

    from abtest.reports import ReportOptions, build_report
    from abtest.reports.html import render_html
    from abtest.reports.csv import render_csv
    with db.session() as session:
        report = build_report(session, "v2-vs-v1", ReportOptions(cap=0.99))

        body = report.to_json()  # the JSON of GET /report

Modules: ``catalogue`` (the built-in metrics), ``statuses`` (which request statuses count how),
``rollups`` (the tables the queries read, kept as requests are logged), ``queries`` (SQL and
ORM only), ``metrics`` (rows to statistics), ``specs`` (the metrics of an experiment),
``model`` (the typed report and its JSON), ``blocks`` and ``build`` (the report),
``html``/``svg`` (the page), ``csv`` (results and raw exports), ``cli`` (``abtest report``),
``baseline`` (a metric's control baseline and traffic, for the power planner).
The decision policy is :mod:`abtest.stats.decision`.
The names below load lazily so that the CLI can mount ``abtest report`` without scipy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Report", "ReportOptions", "build_report", "metric_specs"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
