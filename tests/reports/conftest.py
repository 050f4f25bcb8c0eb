"""Fixtures for report tests: an experiment plus a Factory writing its raw rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .factories import Factory

METRICS = [
    {"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary"},
    {"name": "revenue", "event": "purchase", "kind": "sum"},
    {"name": "orders", "event": "purchase", "kind": "count", "attribution_window_hours": 2},
    {"name": "error_rate", "role": "guardrail"},
    {"name": "latency_p99_ms", "role": "guardrail"},
]


@pytest.fixture
def factory(db_url: str, make_experiment: Callable[..., Any]) -> Iterator[Callable[..., Factory]]:
    made: list[Factory] = []

    def make(key: str = "exp-1", **overrides: Any) -> Factory:
        overrides.setdefault("metrics", METRICS)
        make_experiment(key, start=True, **overrides)
        f = Factory(db_url, key)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


@pytest.fixture
def report_of(services: Any) -> Callable[..., dict[str, Any]]:
    """The report's JSON (``Report.to_json()``, the body of GET /report) as the tests read it."""
    from abtest.reports import ReportOptions, build_report

    def build(key: str = "exp-1", **options: Any) -> dict[str, Any]:
        with services.db.session() as session:
            return build_report(session, key, ReportOptions(**options)).to_json()

    return build
