"""The reports package's layering: one catalogue, pure definitions, ORM only in the queries.

Checked on the source (AST), beside the typed report's own contract: frozen objects whose
failures carry a code, and built-in metrics that come from the catalogue everywhere.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from abtest.reports import catalogue
from abtest.validation.experiments import BUILTIN_METRICS, parse_metrics

from .factories import T0, simple

ROOT = Path(__file__).resolve().parents[2] / "abtest"
PURE = ("catalogue.py", "statuses.py", "model.py", "specs.py", "metrics.py", "blocks.py", "html.py", "svg.py",
        "holdout_html.py")


def _imports(path: Path) -> set[str]:
    """Absolute module names a module imports (relative ones resolved inside abtest.reports)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = ["abtest", path.parent.name][: 3 - node.level]
                base = ".".join([*package, *([base] if base else [])])
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "reports").glob("*.py")))
def test_reports_never_import_the_services(name: str) -> None:
    assert not {m for m in _imports(ROOT / "reports" / name) if m.startswith("abtest.services")}


@pytest.mark.parametrize("name", PURE)
def test_definitions_and_renderings_are_pure(name: str) -> None:
    bad = {m for m in _imports(ROOT / "reports" / name)
           if m.split(".")[0] in ("flask", "sqlalchemy", "torch") or m.startswith(("abtest.models", "abtest.db"))}
    assert not bad


def test_guardrails_pause_through_the_experiments_service() -> None:
    source = (ROOT / "services" / "guardrails.py").read_text()
    assert "pause_treatment" in source and "AuditEntry" not in source and "version + 1" not in source


def test_the_catalogue_is_what_the_validator_and_the_report_read() -> None:
    assert BUILTIN_METRICS == {m.name: m.direction for m in catalogue.BUILTINS}
    parsed = parse_metrics([{"name": m.name} for m in catalogue.BUILTINS])
    assert [(m["name"], m["kind"], m["direction"]) for m in parsed] == [
        (m.name, "builtin", m.direction) for m in catalogue.BUILTINS]
    assert catalogue.quantile_levels("latency") == {"latency_p50_ms": 0.5, "latency_p95_ms": 0.95,
                                                    "latency_p99_ms": 0.99}
    assert catalogue.quantile_levels("ttft") == {"ttft_p50_ms": 0.5, "ttft_p95_ms": 0.95}
    assert [m for m, d in BUILTIN_METRICS.items() if d == "increase"] == ["tokens_per_s"]


def test_the_report_is_typed_and_frozen(factory, services) -> None:  # type: ignore[no-untyped-def]
    from abtest.reports import ReportOptions, build_report
    from abtest.reports.model import Report

    f = factory("exp-1")
    simple(f, np.random.default_rng(3), {"control": 40, "treatment": 40}, {"control": 0.1, "treatment": 0.2},
           {"control": 0.0, "treatment": 0.0}, {"control": 300.0, "treatment": 300.0})
    for v in ("control", "treatment"):
        f.exposure(f"{v}-late", v, T0)
    f.flush()
    with services.db.session() as session:
        report = build_report(session, "exp-1", ReportOptions())
    assert isinstance(report, Report)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.generated_at = "x"  # type: ignore[misc]
    names = [m.name for m in report.metrics]
    assert names[:len(catalogue.BUILTINS)] == [m.name for m in catalogue.BUILTINS]
    errors = report.metric("error_rate").comparison("treatment")
    assert errors.error_code == "zero_variance" and errors.error == "both variants have zero variance; no test is possible"
    assert "error_code" not in report.to_json()["metrics"][names.index("error_rate")]["comparisons"][0]
    assert report.metric("conversion").comparison("treatment").error_code is None
    assert {g.metric: g.status for g in report.recommendations[0].guardrails}["error_rate"] == "ok"
