"""``abtest experiments`` create, list, show and update against real databases (SQLite and PostgreSQL).

Each command goes through the API's service layer: a refused change exits 2 with the service's
own ``field: message`` and leaves the experiment and its audit log as they were.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from abtest.cli import cli
from abtest.cli_experiments_flags import forced_units, share_or_none, weights
from abtest.container import EngineNames
from abtest.config import Settings
from abtest.db import Database, upgrade
from abtest.errors import ValidationError
from abtest.services import experiments as svc
from tests.conftest import clear_tables, experiment_payload


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def cli_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The database the CLI uses (ABTEST_DATABASE_URL): a fresh SQLite file, or the emptied PostgreSQL one."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        clear_tables(url)
    else:
        url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
        upgrade(url)
    monkeypatch.setenv("ABTEST_DATABASE_URL", url)
    monkeypatch.setenv("ABTEST_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.delenv("ABTEST_ACTOR", raising=False)
    return url


@pytest.fixture
def sqlite_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    upgrade(url)
    monkeypatch.setenv("ABTEST_DATABASE_URL", url)
    monkeypatch.setenv("ABTEST_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.delenv("ABTEST_ACTOR", raising=False)
    return url


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["experiments", *args], input=input)


def create(key: str = "exp", *, start: bool = False, **overrides: Any) -> None:
    result = run("create", input=json.dumps(experiment_payload(key, **overrides)))
    assert result.exit_code == 0, result.output
    if start:
        assert run("start", key).exit_code == 0


def state(url: str, key: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stored experiment (API view) and its audit log, read without the CLI."""
    db = Database(url)
    try:
        with db.session() as session:
            exp = svc.get_experiment(session, key)
            return svc.experiment_view(exp), svc.audit_entries(session, exp)
    finally:
        db.dispose()


def service_error(url: str, key: str, payload: Any) -> str:
    """The message the service itself gives for this PATCH body (in a transaction rolled back)."""
    db = Database(url)
    try:
        with db.session() as session:
            exp = svc.get_experiment(session, key, for_update=True)
            with pytest.raises(ValidationError) as err:
                svc.update_experiment(session, exp, payload, "probe", EngineNames(Settings.load()))
            session.rollback()
        return err.value.message
    finally:
        db.dispose()


def write(tmp_path: Path, name: str, data: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


# --- create, list, show --------------------------------------------------------------------

def test_create_from_stdin_records_the_os_user_and_json_is_the_api_view(cli_url: str) -> None:
    result = run("create", "--json", input=json.dumps(experiment_payload("stdin-exp")))
    assert result.exit_code == 0, result.output
    view, audit = state(cli_url, "stdin-exp")
    assert json.loads(result.stdout) == view
    assert [(e["actor"], e["action"]) for e in audit] == [(f"cli:{getpass.getuser()}", "create")]


def test_create_refusal_is_the_services_message_exit_2_and_writes_nothing(cli_url: str, tmp_path: Path) -> None:
    bad = experiment_payload("bad", variants=[{"key": "control", "engine": "v1-fp32", "weight": 0.5},
                                              {"key": "treatment", "engine": "nope", "weight": 0.5}])
    result = run("create", "-f", write(tmp_path, "bad.json", bad))
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: variants[1].engine: unknown engine 'nope'"
    assert json.loads(run("list", "--json").stdout) == {"experiments": []}
    (tmp_path / "broken.json").write_text("{nope")
    broken = run("create", "-f", str(tmp_path / "broken.json"))
    assert broken.exit_code == 2 and "not valid JSON" in broken.stderr


def test_create_with_actor_option_and_env(sqlite_cli: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("create", "--actor", "alice@example.com", input=json.dumps(experiment_payload("a"))).exit_code == 0
    monkeypatch.setenv("ABTEST_ACTOR", "release-bot")
    assert run("create", input=json.dumps(experiment_payload("b"))).exit_code == 0
    assert state(sqlite_cli, "a")[1][0]["actor"] == "alice@example.com"
    assert state(sqlite_cli, "b")[1][0]["actor"] == "release-bot"
    empty = run("create", "--actor", " ", input=json.dumps(experiment_payload("c")))
    assert empty.exit_code == 2 and "actor: must not be empty" in empty.stderr
    assert run("show", "c").exit_code == 1


def test_list_filters_by_status_and_marks_paused_treatments(sqlite_cli: str) -> None:
    create("draft-one")
    create("running-one", start=True)
    lines = run("list").stdout.splitlines()
    assert [line.split("\t")[:3] for line in lines] == [["draft-one", "draft", "phase 1"],
                                                        ["running-one", "running", "phase 1"]]
    assert run("list", "--status", "running").stdout.splitlines() == [lines[1]]
    listed = json.loads(run("list", "--status", "draft", "--json").stdout)["experiments"]
    assert listed == [state(sqlite_cli, "draft-one")[0]]
    empty = run("list", "--status", "stopped")
    assert empty.exit_code == 0 and empty.stdout == "" and "no experiments stopped" in empty.stderr
    assert run("list", "--status", "bogus").exit_code == 2
    db = Database(sqlite_cli)
    with db.transaction() as session:
        svc.pause_treatment(session, svc.get_experiment(session, "running-one", for_update=True), "monitor", "harm")
    db.dispose()
    assert run("list", "--status", "running").stdout.rstrip("\n").endswith("\ttreatment paused")


def test_show_prints_every_part_and_json_is_the_api_view(sqlite_cli: str) -> None:
    create("shown", targeting=[{"attribute": "country", "op": "in", "value": ["US", "CA"]}],
           forced={"qa-1": "treatment"}, coverage=0.25)
    text = run("show", "shown").stdout
    for part in ("shown: V2 INT4 vs V1 FP32", "status      draft", "25 % of eligible units",
                 "control  v1-fp32  weight 0.5  (control)", "treatment  v2-int4  weight 0.5",
                 "conversion  binary of purchase  primary", 'country in ["US", "CA"]', "qa-1 -> treatment"):
        assert part in text, part
    assert json.loads(run("show", "shown", "--json").stdout) == state(sqlite_cli, "shown")[0]
    missing = run("show", "nope")
    assert missing.exit_code == 1 and "not_found: no experiment with key 'nope'" in missing.stderr


# --- update --------------------------------------------------------------------------------

def test_update_flags_change_each_field_with_one_audit_entry_each(cli_url: str, tmp_path: Path) -> None:
    create("upd")
    rules = [{"attribute": "plan", "op": "eq", "value": "pro"}]
    metrics = [{"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary", "margin": 0.02},
               {"name": "error_rate", "role": "guardrail"}]
    steps = [
        (["--coverage", "0.5"], "coverage", 0.5),
        (["--hypothesis", "V2 is as good"], "hypothesis", "V2 is as good"),
        (["--name", "Renamed"], "name", "Renamed"),
        (["--owner", "team-b"], "owner", "team-b"),
        (["--targeting", write(tmp_path, "rules.json", rules)], "targeting", rules),
        (["--force", "qa-1=treatment", "--force", "qa=2=control"], "forced", {"qa-1": "treatment", "qa=2": "control"}),
        (["--unforce", "qa-1"], "forced", {"qa=2": "control"}),
        (["--quality-sample", "0.1"], "quality_sample", 0.1),
        (["--quality-sample", "none"], "quality_sample", None),
        (["--weights", "control=0.7,treatment=0.3"], "variants", ...),
        (["--metrics", write(tmp_path, "m.json", metrics), "--decision", "non_inferiority"], "decision",
         "non_inferiority"),
    ]
    for n, (args, field, expected) in enumerate(steps, start=2):
        result = run("update", "upd", *args, "--actor", f"step-{n}")
        assert result.exit_code == 0, (args, result.output)
        assert result.stdout.startswith(f"upd: updated (version {n}, phase 1)")
        view, audit = state(cli_url, "upd")
        if expected is not ...:
            assert view[field] == expected
        assert (audit[-1]["actor"], audit[-1]["action"]) == (f"step-{n}", "update")
        assert audit[-1]["changes"][field]["to"] == view[field]
    assert [v["weight"] for v in view["variants"]] == [0.7, 0.3]
    assert view["metrics"][0]["margin"] == 0.02 and [m["name"] for m in view["metrics"]] == ["conversion", "error_rate"]
    assert len(audit) == 1 + len(steps)


def test_update_from_a_file_and_flags_together(sqlite_cli: str, tmp_path: Path) -> None:
    create("both")
    changes = {"coverage": 0.2, "owner": "from-file", "forced": {"u1": "control"}}
    result = run("update", "both", "-f", write(tmp_path, "c.json", changes), "--owner", "from-flag",
                 "--force", "u2=treatment", "--json")
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view == state(sqlite_cli, "both")[0]
    assert (view["coverage"], view["owner"], view["forced"]) == (0.2, "from-flag", {"u1": "control", "u2": "treatment"})
    piped = run("update", "both", "-f", "-", input=json.dumps({"treatment_paused": True}))
    assert piped.exit_code == 0 and state(sqlite_cli, "both")[0]["treatment_paused"] is True


@pytest.mark.parametrize("args, message", [
    (["--coverage", "3"], "coverage: must be <= 1.0"),
    (["--weights", "control=0.7,treatment=0.7"], "variants: weights must sum to 1 (they sum to 1.4)"),
    (["--weights", "control=0.5,other=0.5"], "weights: unknown variant 'other' (variants: control, treatment)"),
    (["--weights", "control:0.5"], "weights: 'control:0.5' is not VARIANT=WEIGHT"),
    (["--force", "u1=ghost"], "forced.u1: unknown variant 'ghost'"),
    (["--unforce", "never-forced"], "unforce: unit 'never-forced' is not forced"),
    (["--decision", "vibes"], "decision: must be one of superiority, non_inferiority"),
    (["--decision", "non_inferiority"], "metrics[0].margin: a non-inferiority experiment needs a margin > 0"),
    (["--quality-sample", "lots"], "quality_sample: must be a number in (0, 1], or none"),
    (["--quality-sample", "0"], "quality_sample: must be in (0, 1]"),
])
def test_update_refusals_exit_2_with_field_and_message_and_write_nothing(cli_url: str, args: list[str],
                                                                         message: str) -> None:
    create("strict", start=True)
    before = state(cli_url, "strict")
    result = run("update", "strict", *args, "--yes")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: {message}")
    assert result.stdout == "" and "warning" not in result.stderr
    assert state(cli_url, "strict") == before


def test_update_file_refusals_are_the_services_own(cli_url: str, tmp_path: Path) -> None:
    create("same")
    before = state(cli_url, "same")
    for body in ({"targeting": [{"attribute": "a", "op": "like", "value": 1}]},
                 {"variants": [{"key": "solo", "engine": "v1-fp32", "weight": 1.0}]}, ["not", "an", "object"]):
        result = run("update", "same", "-f", write(tmp_path, "body.json", body))
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == f"Error: {service_error(cli_url, 'same', body)}"
    assert state(cli_url, "same") == before


def test_update_without_changes_is_a_usage_error(sqlite_cli: str) -> None:
    create("idle")
    result = run("update", "idle")
    assert result.exit_code == 2 and "nothing to change" in result.output
    assert state(sqlite_cli, "idle")[0]["version"] == 1


def test_a_new_phase_warns_and_needs_confirmation(cli_url: str) -> None:
    create("phased", start=True)
    before = state(cli_url, "phased")
    declined = run("update", "phased", "--weights", "control=0.8,treatment=0.2", input="n\n")
    assert declined.exit_code == 1
    assert "opens phase 2: every unit is re-randomized" in declined.stderr and "Aborted" in declined.stderr
    no_answer = run("update", "phased", "--weights", "control=0.8,treatment=0.2")  # no terminal: no consent
    assert no_answer.exit_code == 1
    assert state(cli_url, "phased") == before
    accepted = run("update", "phased", "--weights", "control=0.8,treatment=0.2", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "phased: updated (version 3, phase 2)" in accepted.stdout
    view, audit = state(cli_url, "phased")
    assert view["phase"] == 2 and [v["weight"] for v in view["variants"]] == [0.8, 0.2]
    assert audit[-1]["changes"]["phase"] == {"from": 1, "to": 2}
    forced = run("update", "phased", "--weights", "control=0.5,treatment=0.5", "--yes")
    assert forced.exit_code == 0 and "opens phase 3" in forced.stderr
    assert state(cli_url, "phased")[0]["phase"] == 3


def test_no_phase_warning_for_a_draft_or_a_coverage_ramp(sqlite_cli: str) -> None:
    create("draft")
    create("ramp", start=True)
    draft = run("update", "draft", "--weights", "control=0.9,treatment=0.1")
    ramp = run("update", "ramp", "--coverage", "0.3")
    for result in (draft, ramp):
        assert result.exit_code == 0, result.output
        assert "warning" not in result.stderr
    assert state(sqlite_cli, "draft")[0]["phase"] == 1 and state(sqlite_cli, "ramp")[0]["phase"] == 1


def test_dry_run_shows_the_changes_and_writes_nothing(sqlite_cli: str) -> None:
    create("rehearsed", start=True)
    before = state(sqlite_cli, "rehearsed")
    result = run("update", "rehearsed", "--weights", "control=0.6,treatment=0.4", "--coverage", "0.5", "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "rehearsed: dry run, nothing written"
    assert "  coverage: 1.0 -> 0.5" in result.stdout.splitlines() and "opens phase 2" in result.stderr
    as_json = json.loads(run("update", "rehearsed", "--coverage", "0.5", "--dry-run", "--json").stdout)
    assert as_json["changes"]["coverage"] == {"from": 1.0, "to": 0.5} and as_json["experiment"]["coverage"] == 0.5
    assert state(sqlite_cli, "rehearsed") == before


def test_a_stopped_experiment_cannot_change(sqlite_cli: str) -> None:
    create("done", start=True)
    assert run("stop", "done").exit_code == 0
    before = state(sqlite_cli, "done")
    result = run("update", "done", "--coverage", "0.1")
    assert result.exit_code == 1 and "conflict: experiment 'done' is stopped" in result.stderr
    assert state(sqlite_cli, "done") == before


def test_cli_and_api_make_the_same_change(db_url: str, client: Any, admin: dict[str, str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The same PATCH through the API and through the CLI leaves the same experiment."""
    monkeypatch.setenv("ABTEST_DATABASE_URL", db_url)
    monkeypatch.setenv("ABTEST_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    for key in ("via-api", "via-cli"):
        assert client.post("/v1/experiments", json=experiment_payload(key), headers=admin).status_code == 201
    body = {"coverage": 0.4, "forced": {"u9": "treatment"}, "hypothesis": "h2",
            "targeting": [{"attribute": "country", "op": "eq", "value": "FR"}]}
    api = client.patch("/v1/experiments/via-api", json=body, headers=admin).get_json()
    result = run("update", "via-cli", "-f", write(tmp_path, "b.json", body), "--json")
    assert result.exit_code == 0, result.output
    cli_view = json.loads(result.stdout)
    differ = {"key", "created_at", "updated_at"}
    assert {k: v for k, v in cli_view.items() if k not in differ} == {k: v for k, v in api.items() if k not in differ}
    audit = client.get("/v1/experiments/via-cli/audit", headers=admin).get_json()["entries"]
    assert audit[-1]["actor"] == f"cli:{getpass.getuser()}"
    for refused in ({"key": "renamed"}, {"layer_share": 0.5}, {"coverage": -1}, {"colour": "red"}):
        reply = client.patch("/v1/experiments/via-api", json=refused, headers=admin)
        assert reply.status_code == 422
        result = run("update", "via-cli", "-f", write(tmp_path, "r.json", refused))
        assert result.exit_code == 2 and result.stderr.strip() == f"Error: {reply.get_json()['error']['message']}"
    assert client.get("/v1/experiments/via-cli/audit", headers=admin).get_json()["entries"] == audit


# --- the flags' own syntax -----------------------------------------------------------------

def test_weights_flag_keeps_unnamed_variants_and_the_rest_of_each_variant() -> None:
    variants = [{"key": "a", "engine": "e1", "weight": 0.5, "control": True},
                {"key": "b", "engine": "e2", "weight": 0.3}, {"key": "c", "engine": "e3", "weight": 0.2}]
    assert weights(" a=0.4 , b=0.4", variants) == [{"key": "a", "engine": "e1", "weight": 0.4, "control": True},
                                                   {"key": "b", "engine": "e2", "weight": 0.4},
                                                   {"key": "c", "engine": "e3", "weight": 0.2}]
    for text, fragment in (("a=0.5,a=0.5", "given twice"), ("=0.5", "is not VARIANT=WEIGHT"),
                           ("a=half", "is not VARIANT=WEIGHT"), ("z=1", "unknown variant 'z'")):
        with pytest.raises(ValidationError, match=fragment):
            weights(text, variants)
    with pytest.raises(ValidationError, match="must be a list of objects"):
        weights("a=1", {"a": 1})


def test_force_and_unforce_flags() -> None:
    assert forced_units({"x": "a"}, ("y=b", "with=equals=a"), ("x",)) == {"y": "b", "with=equals": "a"}
    with pytest.raises(ValidationError, match="also given to --force"):
        forced_units({}, ("x=a",), ("x",))
    with pytest.raises(ValidationError, match="is not UNIT=VARIANT"):
        forced_units({}, ("x=",), ())
    assert share_or_none("None") is None and share_or_none("0.25") == 0.25
