"""Experiment reports: sufficient statistics in SQL, analysis by :mod:`abtest.stats`, and the
JSON, HTML and CSV renderings (no Flask here; ``abtest.api.reports`` serves them).

    from abtest.reports import ReportOptions, build_report, render_html, render_csv
    with db.session() as session:
        report = build_report(session, "v2-vs-v1", ReportOptions(cap=0.99))
"""

from .build import ReportOptions, build_report, metric_specs

__all__ = ["ReportOptions", "build_report", "metric_specs"]
