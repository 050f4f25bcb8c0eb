"""Relative paths are resolved once, when the settings (or a benchmark's arguments) are read:
a later chdir, in this thread or another, cannot move the checkpoints, the registry or the
SQLite file."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest

from abtest.config import Settings
from engines.spec import builtin_specs, default_checkpoint_root, load_registry

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    other = tmp_path / "elsewhere"
    other.mkdir()
    return other


def test_relative_settings_become_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings.load(environ={"ABTEST_CHECKPOINT_DIR": "models/ck", "ABTEST_ENGINE_REGISTRY": "conf/engines.json",
                               "ABTEST_DATABASE_URL": "sqlite:///data/ab.sqlite"})
    assert s.checkpoint_dir == str(tmp_path / "models" / "ck")
    assert s.engine_registry == str(tmp_path / "conf" / "engines.json")
    assert s.database_url == f"sqlite:///{tmp_path / 'data' / 'ab.sqlite'}"
    assert s.is_sqlite


def test_defaults_resolve_against_the_start_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings.load(environ={})
    assert s.checkpoint_dir == str(tmp_path / "var" / "checkpoints")
    assert s.database_url == f"sqlite:///{tmp_path / 'var' / 'abtest.sqlite'}"
    assert s.engine_registry is None


def test_overrides_are_resolved_too(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings.load({"checkpoint_dir": Path("ck"), "engine_registry": "r.json",
                       "database_url": "sqlite+pysqlite:///x.db?timeout=5"}, environ={})
    assert s.checkpoint_dir == str(tmp_path / "ck") and s.engine_registry == str(tmp_path / "r.json")
    assert s.database_url == f"sqlite+pysqlite:///{tmp_path / 'x.db'}?timeout=5"


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:////abs/ab.sqlite",
                                 "sqlite:///file:ab?mode=memory&uri=true", "postgresql+psycopg://u:p@db:5432/ab"])
def test_other_database_urls_are_unchanged(url: str) -> None:
    assert Settings.load({"database_url": url}, environ={}).database_url == url


def test_chdir_after_load_changes_nothing(tmp_path, monkeypatch, elsewhere) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "engines.json").write_text(json.dumps({"engines": [
        {"name": "mine", "checkpoint": "models/mine", "precision": "fp32"}]}))
    s = Settings.load(environ={"ABTEST_ENGINE_REGISTRY": "engines.json"})
    before = (s.checkpoint_dir, s.engine_registry, s.database_url)
    os.chdir(elsewhere)
    assert (s.checkpoint_dir, s.engine_registry, s.database_url) == before
    specs = load_registry(s.engine_registry, s.checkpoint_dir)
    assert specs["v2-int4"].checkpoint == str(tmp_path / "var" / "checkpoints" / "v2-int4")
    assert specs["mine"].checkpoint == str(tmp_path / "models" / "mine")


def test_a_chdir_in_another_thread_changes_nothing(tmp_path, monkeypatch, elsewhere) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings.load(environ={})
    t = threading.Thread(target=os.chdir, args=(elsewhere,))
    t.start()
    t.join()
    assert Path.cwd() == elsewhere
    assert s.checkpoint_dir == str(tmp_path / "var" / "checkpoints")
    assert load_registry(None, s.checkpoint_dir)["v1-fp32"].checkpoint == str(tmp_path / "var" / "checkpoints" / "v1-fp32")


def test_engine_paths_are_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_checkpoint_root("ck") == tmp_path / "ck"
    assert default_checkpoint_root() == tmp_path / "var" / "checkpoints"
    assert builtin_specs("other")["v1-fp32"].checkpoint == str(tmp_path / "other" / "v1-fp32")
    (tmp_path / "reg.json").write_text(json.dumps({"engines": [{"name": "v1-fp32", "checkpoint": "./mine"}]}))
    assert load_registry("reg.json")["v1-fp32"].checkpoint == str(tmp_path / "mine")


# --- the benchmarks' checkpoint defaults -----------------------------------------------------

def test_engines_benchmark_default_root_is_the_repository_var_checkpoints(monkeypatch, elsewhere) -> None:
    from benchmarks.engines import checkpoint_root, parse_args

    monkeypatch.delenv("ABTEST_CHECKPOINT_DIR", raising=False)
    monkeypatch.chdir(REPO)
    root = checkpoint_root()
    args = parse_args([])
    assert root == REPO / "var" / "checkpoints" and args.root == root
    os.chdir(elsewhere)
    assert args.root == REPO / "var" / "checkpoints"  # resolved once, at argument parsing
    assert parse_args(["--root", "mine"]).root == elsewhere / "mine"


def test_serving_benchmark_default_root_and_registry(tmp_path, monkeypatch) -> None:
    from benchmarks.serving import checkpoint_root, registry_file

    monkeypatch.delenv("ABTEST_CHECKPOINT_DIR", raising=False)
    monkeypatch.chdir(REPO)
    checkpoints = checkpoint_root()
    assert checkpoints == REPO / "var" / "checkpoints"
    # the registry file lives in a temporary folder: its checkpoint must still point into the repo
    registry, name = registry_file(tmp_path, "demo", True)
    assert json.loads(Path(registry).read_text())["engines"][0]["checkpoint"] == str(checkpoints / "v2-int4")
    assert load_registry(registry)[name].checkpoint == str(checkpoints / "v2-int4")


def test_serving_benchmark_names_missing_demo_checkpoints(tmp_path, monkeypatch, capsys) -> None:
    from benchmarks import serving

    monkeypatch.setenv("ABTEST_CHECKPOINT_DIR", str(tmp_path / "ck"))
    monkeypatch.setattr(sys, "argv", ["serving", "--engines", "demo", "--no-celery"])
    with pytest.raises(SystemExit) as info:
        serving.main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "ck" / "v2-int4") in err and f"abtest engines build-demo --root {tmp_path / 'ck'}" in err
