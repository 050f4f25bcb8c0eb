"""docker-compose.yml: the production services exist, and every command they run is a real CLI command."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest
import yaml

from abtest.cli import cli
from abtest.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def resolve(args: list[str]) -> click.Context:
    """Parse ``abtest ARGS`` down to the leaf command; raises on unknown commands or options."""
    assert args[0] == "abtest"
    command: click.Command = cli
    rest = args[1:]
    while isinstance(command, click.Group):
        found = command.get_command(click.Context(command), rest[0])
        assert found is not None, f"no CLI command {rest[0]!r} in {args}"
        command, rest = found, rest[1:]
    return command.make_context(command.name or "", list(rest))


def test_production_services_are_declared() -> None:
    assert {"postgres", "redis", "migrate", "api", "worker-v1", "worker-v2"} <= set(SERVICES)
    assert "pgdata" in COMPOSE["volumes"]
    assert any(v.startswith("pgdata:") for v in SERVICES["postgres"]["volumes"])
    for name in ("postgres", "redis", "api", "worker-v1", "worker-v2"):
        assert SERVICES[name]["healthcheck"]["test"], name


@pytest.mark.parametrize("name", ["worker-v1", "worker-v2"])
def test_workers_reserve_a_gpu(name: str) -> None:
    devices = SERVICES[name]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if s.get("command", [""])[0] == "abtest"])
def test_every_abtest_command_exists(name: str) -> None:
    ctx = resolve(SERVICES[name]["command"])
    assert ctx.command.callback is not None


def test_worker_commands_name_both_engines() -> None:
    engines = {resolve(SERVICES[n]["command"]).params["engine"] for n in ("worker-v1", "worker-v2")}
    assert engines == {"v1-fp32", "v2-int4"}


def test_env_example_sets_only_known_settings() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip().lstrip("# ")
        if line.startswith("ABTEST_") and "=" in line:
            assert line.split("=", 1)[0].removeprefix("ABTEST_").lower() in fields, line


def test_a_one_shot_fills_the_checkpoints_volume() -> None:
    svc = SERVICES["build-checkpoints"]
    ctx = resolve(svc["command"])
    assert ctx.command.name == "build-demo" and ctx.params["if_missing"] and not ctx.params["force"]
    assert svc["restart"] == "no" and "deploy" not in svc and "healthcheck" not in svc
    mounts = {v.split(":")[1] for v in svc["volumes"] if v.startswith("checkpoints:")}
    for name in ("worker-v1", "worker-v2"):
        assert mounts & {v.split(":")[1] for v in SERVICES[name]["volumes"] if v.startswith("checkpoints:")}, name
    assert "checkpoints" in COMPOSE["volumes"]


@pytest.mark.parametrize("name", ["worker-v1", "worker-v2"])
def test_workers_start_after_the_checkpoints_are_built(name: str) -> None:
    depends = SERVICES[name]["depends_on"]
    assert depends["build-checkpoints"] == {"condition": "service_completed_successfully"}
    assert depends["migrate"] == {"condition": "service_completed_successfully"}


def test_build_demo_if_missing_is_a_no_op_when_present(tmp_path) -> None:
    from click.testing import CliRunner

    for d, files in (("v1-fp32", ["config.json"]), ("v2-int4", ["config.json", "int4_config.json"])):
        (tmp_path / d).mkdir()
        for f in files:
            (tmp_path / d / f).write_text("{}")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(cli, ["engines", "build-demo", "--if-missing", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert '"built": false' in result.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    both = CliRunner().invoke(cli, ["engines", "build-demo", "--if-missing", "--force", "--root", str(tmp_path)])
    assert both.exit_code != 0
