"""``abtest report KEY --format text``: the console summary, and ``--phase``."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, update

from abtest.cli import cli
from abtest.models import Experiment
from abtest.reports.text import human_time

from .factories import Factory, simple


@pytest.fixture
def cli_db(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """exp-1 with 60 + 60 units in phase 1, then moved to phase 2 with 30 + 30 units."""
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    monkeypatch.setenv("ABTEST_DATABASE_URL", url)
    monkeypatch.setenv("ABTEST_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    spec = tmp_path / "exp.json"
    from tests.conftest import experiment_payload

    spec.write_text(json.dumps(experiment_payload("exp-1")))
    for args in (["experiments", "create", "-f", str(spec)], ["experiments", "start", "exp-1"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
    f = Factory(url, "exp-1")
    simple(f, np.random.default_rng(2), {"control": 60, "treatment": 60}, {"control": 0.1, "treatment": 0.3},
           {"control": 0.05, "treatment": 0.05}, {"control": 300.0, "treatment": 250.0})
    f.flush()
    f.close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(update(Experiment).where(Experiment.key == "exp-1").values(phase=2))
    engine.dispose()
    f = Factory(url, "exp-1")
    for v in ("control", "treatment"):
        for i in range(30):
            f.exposure(f"p2-{v}-{i}", v)
            f.request(f"p2-{v}-{i}", v, 200.0)
    f.flush()
    f.close()
    return runner


def test_text_summary_leads_with_the_headline_and_lists_counts(cli_db) -> None:  # type: ignore[no-untyped-def]
    text = cli_db.invoke(cli, ["report", "exp-1", "--format", "text", "--phase", "1"])
    assert text.exit_code == 0, text.output
    body = json.loads(cli_db.invoke(cli, ["report", "exp-1", "--phase", "1"]).stdout)
    lines = text.stdout.splitlines()
    assert lines[0] == body["headline"]
    assert "phase 1 (current: 2)" in lines[2] and body["options"]["phase"] == 1
    conv = next(m for m in body["metrics"] if m["name"] == "conversion")
    line = next(x for x in lines if x.startswith("conversion (primary"))
    for variant, est in conv["variants"].items():
        c = est["count"]
        assert f"{variant} {est['estimate'] * 100:.2f} % (conversions {c['numerator']} / {c['denominator']} units)" \
            in line
    assert "verdict interval (always-valid, absolute)" in line
    err = next(x for x in lines if x.startswith("error_rate ("))
    assert re.search(r"control [\d.]+ % \(errors \d+ / \d+ requests\)", err)
    verdict = lines.index(f"{body['recommendation']['action'].upper()} treatment")
    reasons = body["recommendation"]["reasons"]  # (the power line's time to go moves with the clock)
    assert len(lines) - verdict - 1 == len(reasons) and lines[verdict + 1] == f"  - {reasons[0]}"


def test_phase_option_reads_that_phase(cli_db) -> None:  # type: ignore[no-untyped-def]
    units = {}
    for phase in ("1", "2"):
        body = json.loads(cli_db.invoke(cli, ["report", "exp-1", "--phase", phase]).stdout)
        units[phase] = {v["variant"]: v["units"] for v in body["variants"]}
    current = json.loads(cli_db.invoke(cli, ["report", "exp-1"]).stdout)
    assert units == {"1": {"control": 60, "treatment": 60}, "2": {"control": 30, "treatment": 30}}
    assert {v["variant"]: v["units"] for v in current["variants"]} == units["2"]
    missing = cli_db.invoke(cli, ["report", "exp-1", "--phase", "3"])
    assert missing.exit_code != 0 and "no phase 3" in missing.output
    assert cli_db.invoke(cli, ["report", "exp-1", "--phase", "0"]).exit_code == 2  # click: bad parameter


def test_human_time() -> None:
    assert human_time("2026-12-01T19:42:42.123456+00:00") == "2026-12-01 19:42 UTC"
    assert human_time("2026-12-01T21:42:00+02:00") == "2026-12-01 19:42 UTC"
    assert human_time(None) == "–"
