"""Start-up side effects happen once per process, and everything started stops cleanly."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from click.testing import CliRunner

from abtest import container, wiring
from abtest.cli import cli
from abtest.config import Settings
from abtest.container import EngineNames, Services
from tests.conftest import experiment_payload


def settings_for(url: str, tmp_path: Any, **overrides: Any) -> Settings:
    return Settings.load({"database_url": url, "preload_engines": False, "checkpoint_dir": str(tmp_path),
                          "guardrail_interval_s": 0.0, **overrides})


def threads_named(name: str) -> int:
    return sum(t.name == name and t.is_alive() for t in threading.enumerate())


def test_one_exit_hook_closes_every_live_container(sqlite_url, tmp_path, monkeypatch) -> None:
    hooks: list[Any] = []
    monkeypatch.setattr(container, "_HOOKED", False)
    monkeypatch.setattr(container.atexit, "register", hooks.append)
    first, second = Services(settings_for(sqlite_url, tmp_path)), Services(settings_for(sqlite_url, tmp_path))
    try:
        assert hooks == [container.close_all]  # one hook, however many containers
        assert {id(first), id(second)} <= {id(s) for s in container.live_containers()}
        first.close()
        first.close()  # idempotent
        assert first.closed and id(first) not in {id(s) for s in container.live_containers()}
        hooks[0]()  # what the interpreter runs at exit
        assert second.closed and id(second) not in {id(s) for s in container.live_containers()}
    finally:
        first.close()
        second.close()


def test_the_monitor_thread_starts_once_and_stops_on_close(sqlite_url, tmp_path) -> None:
    before = threads_named("guardrail-monitor")
    services = Services(settings_for(sqlite_url, tmp_path, guardrail_interval_s=60.0))
    try:
        services.start_monitor()
        monitor = services.monitor
        services.start_monitor()
        assert services.monitor is monitor
        assert threads_named("guardrail-monitor") == before + 1
    finally:
        services.close()
    assert threads_named("guardrail-monitor") == before
    services.start_monitor()  # a closed container starts nothing
    assert threads_named("guardrail-monitor") == before


def test_create_app_starts_the_monitor_it_is_asked_for_and_close_stops_it(sqlite_url, tmp_path) -> None:
    from abtest.app import create_app

    before = threads_named("guardrail-monitor")
    app = create_app({"database_url": sqlite_url, "preload_engines": False, "checkpoint_dir": str(tmp_path),
                      "guardrail_interval_s": 60.0})
    assert threads_named("guardrail-monitor") == before + 1
    app.extensions["abtest"].close()
    assert threads_named("guardrail-monitor") == before


def test_the_sqlite_schema_is_checked_once_per_url(tmp_path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    upgrades: list[str] = []
    real_upgrade = wiring.upgrade
    monkeypatch.setattr(wiring, "upgrade", lambda u: (upgrades.append(u), real_upgrade(u)))
    wiring.ensure_sqlite_schema(url)
    assert upgrades == [url]

    class NoDatabase:
        def __init__(self, *_: Any, **__: Any) -> None:
            raise AssertionError("the schema of this URL was already checked in this process")

    monkeypatch.setattr(wiring, "Database", NoDatabase)
    wiring.ensure_sqlite_schema(url)
    assert upgrades == [url]


def test_a_container_without_a_dispatcher_factory_says_so(sqlite_url, tmp_path) -> None:
    services = Services(settings_for(sqlite_url, tmp_path))
    try:
        with pytest.raises(RuntimeError, match="dispatcher"):
            _ = services.inference
    finally:
        services.close()


def test_engine_names_reads_the_registry_once_and_loads_no_engine(tmp_path) -> None:
    names = EngineNames(Settings.load({"checkpoint_dir": str(tmp_path)}))
    assert names("v1-fp32") and names("v2-int4") and not names("v3")


def test_cli_experiments_create_starts_no_thread_and_disposes_its_database(tmp_path, monkeypatch) -> None:
    from abtest import db as db_module

    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    monkeypatch.setenv("ABTEST_DATABASE_URL", url)
    monkeypatch.setenv("ABTEST_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    assert CliRunner().invoke(cli, ["db", "upgrade"]).exit_code == 0
    opened: list[Any] = []
    disposed: list[Any] = []
    real_init, real_dispose = db_module.Database.__init__, db_module.Database.dispose

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        opened.append(self)
        real_init(self, *args, **kwargs)

    def dispose(self: Any) -> None:
        disposed.append(self)
        real_dispose(self)

    monkeypatch.setattr(db_module.Database, "__init__", init)
    monkeypatch.setattr(db_module.Database, "dispose", dispose)
    live, outcome_threads = len(container.live_containers()), threads_named("outcome-log")
    spec = tmp_path / "exp.json"
    spec.write_text(json.dumps(experiment_payload("cli-lite")))
    for args in (["experiments", "create", "-f", str(spec)], ["experiments", "list"],
                 ["experiments", "show", "cli-lite"], ["experiments", "start", "cli-lite"],
                 ["keys", "create", "--scope", "sdk", "--name", "k"], ["keys", "list"], ["keys", "revoke", "k"],
                 ["db", "rebuild-rollups"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
    assert len(container.live_containers()) == live  # no services container was built
    assert threads_named("outcome-log") == outcome_threads
    assert len(opened) == 8 and all(any(d is o for d in disposed) for o in opened)


def test_every_process_reads_the_one_registry_and_a_bad_one_stops_it(sqlite_url, tmp_path, monkeypatch) -> None:
    import json as json_lib

    from click.testing import CliRunner

    from abtest.app import create_app
    from abtest.cli import cli
    from abtest.config import ConfigError

    registry = tmp_path / "conf" / "engines.json"
    registry.parent.mkdir()
    registry.write_text(json_lib.dumps({"engines": [{"name": "mine-int4", "checkpoint": "ckpt/mine",
                                                     "precision": "int4", "group_size": 64}]}))
    monkeypatch.setenv("ABTEST_ENGINE_REGISTRY", str(registry))
    listed = CliRunner().invoke(cli, ["engines", "list"])
    specs = {s["name"]: s for s in map(json_lib.loads, listed.output.splitlines())}
    assert listed.exit_code == 0 and specs["mine-int4"]["checkpoint"] == str(registry.parent / "ckpt" / "mine")
    other = CliRunner().invoke(cli, ["engines", "list", "--registry", str(tmp_path / "none.json")])
    assert other.exit_code != 0 and "none.json does not exist" in other.output  # --registry still overrides
    assert EngineNames(Settings.load(environ={"ABTEST_ENGINE_REGISTRY": str(registry)}))("mine-int4")

    registry.write_text("{not json")
    with pytest.raises(ConfigError, match=f"ABTEST_ENGINE_REGISTRY: engine registry {registry} is not valid JSON"):
        create_app({"database_url": sqlite_url, "preload_engines": False, "guardrail_interval_s": 0.0})
    worker = CliRunner().invoke(cli, ["worker", "--engine", "mine-int4"])
    assert worker.exit_code != 0 and len(worker.output.strip().splitlines()) == 1
    assert worker.output.startswith(f"Error: abtest worker: ABTEST_ENGINE_REGISTRY: engine registry {registry} "
                                    "is not valid JSON")
