"""The report's JSON is a documented contract: byte-for-byte the same as before the typed report.

The golden files under ``golden/`` were written by the dict-building report (the code before
``build_report`` returned dataclasses), from the scenarios below: every field, value, nesting and
key order of ``Report.to_json()`` must match them. Timestamps that depend on the wall clock
(experiment creation/start, the audit entry of a breach) are pinned so the files are stable.

Regenerate only for an intended change of the contract: ``ABTEST_WRITE_GOLDEN=1``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update

from abtest.models import AuditEntry, Experiment

from .factories import T0, populate, simple

GOLDEN = Path(__file__).parent / "golden"
PINNED = datetime(2026, 11, 19, 9, 30, tzinfo=timezone.utc)
NOW = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)
THREE = [{"key": "control", "engine": "v1-fp32", "weight": 0.34, "control": True},
         {"key": "treatment", "engine": "v2-int4", "weight": 0.33},
         {"key": "treatment-b", "engine": "v2-int4", "weight": 0.33}]
DARK = [{"key": "control", "engine": "v1-fp32", "weight": 1.0, "control": True},
        {"key": "treatment", "engine": "v2-int4", "weight": 0.0, "shadow": True}]


def _filled(f: Any) -> None:
    rng = np.random.default_rng(7)
    units = [(f"u{i}", "treatment" if rng.random() < 0.5 else "control") for i in range(300)]
    populate(f, units, rng, lat_mean={"control": 320, "treatment": 270},
             err_p={"control": 0.03, "treatment": 0.05}, conv_p={"control": 0.2, "treatment": 0.3})
    for i in range(40):
        f.request(f"u{i}", "treatment", 5000.0, shadow=True, output_match=i % 3 == 0)
        f.request(f"u{i}", "control", 7000.0, in_experiment=False)
        f.request(f"u{i}", "control", 9000.0, phase=f.phase + 1)


def _three(f: Any) -> None:
    simple(f, np.random.default_rng(6), {"control": 100, "treatment": 100, "treatment-b": 100},
           {v: 0.1 for v in ("control", "treatment", "treatment-b")},
           {v: 0.02 for v in ("control", "treatment", "treatment-b")},
           {"control": 300, "treatment": 250, "treatment-b": 350})


def _constant(f: Any) -> None:
    for v in ("control", "treatment"):
        for i in range(30):
            f.exposure(f"{v}{i}", v, T0)
            f.request(f"{v}{i}", v, 250.0, at=T0)


def _one_unit(f: Any) -> None:
    for v in ("control", "treatment"):
        f.exposure(f"{v}0", v, T0)
        f.request(f"{v}0", v, 100.0, at=T0)


def _srm(f: Any) -> None:
    simple(f, np.random.default_rng(4), {"control": 1000, "treatment": 820}, {"control": 0.1, "treatment": 0.22},
           {"control": 0.01, "treatment": 0.01}, {"control": 300.0, "treatment": 300.0})


def _breach(f: Any) -> None:
    simple(f, np.random.default_rng(1), {"control": 600, "treatment": 600}, {"control": 0.1, "treatment": 0.1},
           {"control": 0.01, "treatment": 0.2}, {"control": 300.0, "treatment": 300.0})


def _dark(f: Any) -> None:
    for i in range(10):
        f.exposure(f"u{i}", "control", T0)
        f.request(f"u{i}", "control", 300.0 + i, at=T0)
        f.request(f"u{i}", "treatment", 200.0, at=T0, shadow=True, output_match=i < 9)


def _empty(f: Any) -> None:
    pass


# name: (fill, experiment overrides, report options, pause by the guardrail check first)
SCENARIOS: dict[str, tuple[Callable[[Any], None], dict[str, Any], dict[str, Any], bool]] = {
    "filled": (_filled, {}, {}, False),
    "filled-capped-histogram": (_filled, {}, {"cap": 0.9, "histogram": True, "alpha": 0.1, "mde": 0.1}, False),
    "filled-guardrails-only": (_filled, {}, {"metrics": ("error_rate", "latency_p99_ms")}, False),
    "filled-sampled-quantiles": (_filled, {}, {"exact_quantile_rows": 0, "min_sample_units": 1}, False),
    "three-arms": (_three, {"variants": THREE}, {"histogram": True}, False),
    "constant": (_constant, {}, {}, False),
    "one-unit": (_one_unit, {}, {}, False),
    "empty": (_empty, {}, {"histogram": True}, False),
    "srm": (_srm, {}, {}, False),
    "breach-paused": (_breach, {}, {}, True),
    "dark-launch": (_dark, {"variants": DARK}, {}, False),
}


def _pin_clock(services: Any, key: str) -> None:
    with services.db.transaction() as s:
        s.execute(update(Experiment).where(Experiment.key == key).values(
            created_at=PINNED, updated_at=PINNED + timedelta(minutes=1), started_at=PINNED + timedelta(minutes=2)))
        s.execute(update(AuditEntry).values(at=PINNED + timedelta(hours=3)))


def _report_json(services: Any, options: dict[str, Any]) -> str:
    from abtest.reports import ReportOptions, build_report

    with services.db.session() as session:
        report = build_report(session, "exp-1", ReportOptions(now=NOW, **options))
    body = report.to_json() if hasattr(report, "to_json") else report
    return json.dumps(body, indent=1) + "\n"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_json_is_the_documented_contract(scenario, factory, services, db_url) -> None:  # type: ignore[no-untyped-def]
    fill, overrides, options, pause = SCENARIOS[scenario]
    f = factory("exp-1", **overrides)
    fill(f)
    f.flush()
    if pause:
        from abtest.services.guardrails import check_guardrails

        assert check_guardrails(services.db, "exp-1").paused
    _pin_clock(services, "exp-1")
    got = _report_json(services, options)
    dialect = "postgres" if db_url.startswith("postgresql") else "sqlite"
    path = GOLDEN / f"{scenario}-{dialect}.json"
    if os.environ.get("ABTEST_WRITE_GOLDEN"):
        path.write_text(got)
    assert got == path.read_text()
