"""``abtest report KEY --format json|html|csv -o FILE`` against a SQLite file."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from abtest.cli import cli
from abtest.reports.catalogue import BUILTINS

from .factories import Factory, simple


@pytest.fixture
def cli_db(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
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
    simple(f, np.random.default_rng(1), {"control": 50, "treatment": 50}, {"control": 0.1, "treatment": 0.2},
           {"control": 0.02, "treatment": 0.02}, {"control": 300.0, "treatment": 280.0})
    f.flush()
    f.close()
    return runner


@pytest.mark.parametrize("fmt", ["json", "html", "csv"])
def test_report_command_writes_each_format(cli_db, tmp_path, fmt) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / f"report.{fmt}"
    result = cli_db.invoke(cli, ["report", "exp-1", "--format", fmt, "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    if fmt == "json":
        body = json.loads(text)
        assert body["experiment"]["key"] == "exp-1"
        assert {v["variant"]: v["units"] for v in body["variants"]} == {"control": 50, "treatment": 50}
    elif fmt == "html":
        assert text.startswith("<!DOCTYPE html>") and 'id="forest-plot"' in text
    else:
        rows = list(csv.DictReader(text.splitlines()))
        assert [r["metric"] for r in rows][-1] == "conversion" and len(rows) == len(BUILTINS) + 1


def test_report_command_to_stdout_and_unknown_key(cli_db) -> None:  # type: ignore[no-untyped-def]
    result = cli_db.invoke(cli, ["report", "exp-1", "--cap", "0.99"])
    assert result.exit_code == 0 and json.loads(result.stdout)["options"]["cap"] == 0.99
    missing = cli_db.invoke(cli, ["report", "nope"])
    assert missing.exit_code != 0 and "not_found" in missing.output
