"""``abtest layers`` list, show, set-holdout and report against a real SQLite database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from abtest.cli import cli
from abtest.db import upgrade
from tests.conftest import experiment_payload


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    upgrade(url)
    monkeypatch.setenv("ABTEST_DATABASE_URL", url)
    monkeypatch.setenv("ABTEST_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.delenv("ABTEST_ACTOR", raising=False)
    return url


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input)


def test_set_holdout_list_show_and_report(cli_db, tmp_path) -> None:
    made = run("experiments", "create", input=json.dumps(experiment_payload("a", layer="home", layer_share=0.5)))
    assert made.exit_code == 0, made.output
    result = run("layers", "set-holdout", "home", "0.05", "--actor", "ops")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "home\tholdout 0.05\t1 experiments"
    assert run("layers", "list").output.strip() == "home\tholdout 0.05\t1 experiments"
    shown = json.loads(run("layers", "show", "home").output)
    assert shown["holdout"] == 0.05 and [e["key"] for e in shown["experiments"]] == ["a"]
    body = json.loads(run("layers", "report", "home").output)
    assert body["layer"] == "home" and body["units"] == {"holdout": 0, "exposed": 0, "both": 0}
    page = tmp_path / "layer.html"
    written = run("layers", "report", "home", "--format", "html", "-o", str(page))
    assert written.exit_code == 0, written.output
    assert 'id="metrics-table"' in page.read_text()


@pytest.mark.parametrize("args, code, text", [
    (("set-holdout", "home", "0.7"), 2, "holdout: must be <= 0.5"),
    (("set-holdout", "Bad Name", "0.1"), 2, "layer: must be a slug"),
    (("set-holdout", "home", "lots"), 2, "is not a valid float"),
    (("show", "nowhere"), 1, "not_found"),
    (("report", "nowhere"), 1, "not_found"),
])
def test_bad_input_and_refusals(cli_db, args, code, text) -> None:  # type: ignore[no-untyped-def]
    result = run("layers", *args)
    assert result.exit_code == code, result.output
    assert text in result.output
    assert run("layers", "list", "--json").output.strip() == '{\n  "layers": []\n}'  # nothing written


def test_a_started_experiment_blocks_a_change(cli_db) -> None:
    assert run("experiments", "create", input=json.dumps(
        experiment_payload("a", layer="home", layer_share=0.5))).exit_code == 0
    assert run("experiments", "start", "a").exit_code == 0
    result = run("layers", "set-holdout", "home", "0.1")
    assert result.exit_code == 1 and "conflict" in result.output and "a" in result.output
