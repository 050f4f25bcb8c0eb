"""The ``abtest`` command line: serve, db, keys, experiments (and engines, worker, demo)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from . import cli_common as common
from .config import Settings
from .errors import ABTestError

if TYPE_CHECKING:
    pass

__all__ = ["cli", "main"]


def _settings() -> Settings:
    return Settings.load()


def _fail(exc: ABTestError) -> None:
    raise click.ClickException(f"{exc.code}: {exc.message}")


@click.group()
@click.version_option(package_name="abtest")
def cli() -> None:
    """abtest: A/B testing for LLM inference engines."""


# --- serve -------------------------------------------------------------------------------

@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (0.0.0.0: every interface)")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port to listen on")
@click.option("--workers", default=1, show_default=True, type=int, help="gunicorn worker processes")
@click.option("--threads", default=None, type=int,
              help="threads per worker (default: every engine's in-flight limit plus 8)")
def serve(host: str, port: int, workers: int, threads: int | None) -> None:
    """Run the API under gunicorn (embedded SQLite schema is created on first start).

    The settings and the engine registry are checked first: a bad one stops it with one line."""
    from .config import ConfigError
    from .server import run_gunicorn

    try:
        run_gunicorn(host=host, port=port, workers=workers, threads=threads)
    except ConfigError as exc:
        raise click.ClickException(f"abtest serve: {exc}") from None


@cli.command()
@click.option("--engine", required=True, help="engine name, e.g. v1-fp32 or v2-int4")
@click.option("--device", default=None, help="override the spec's device, e.g. cuda:0")
@click.option("--concurrency", default=None, type=int, help="worker threads (default: the batch size, at most 64)")
@click.option("--loglevel", default="INFO", show_default=True,
              help="Celery's log level in text mode (in JSON mode ABTEST_LOG_LEVEL applies)")
def worker(engine: str, device: str | None, concurrency: int | None, loglevel: str) -> None:
    """Run a Celery worker for one engine's queue (needs ABTEST_BROKER_URL)."""
    from .config import ConfigError
    from .wiring import check_registry

    try:
        settings = _settings()
        check_registry(settings)
    except ConfigError as exc:
        raise click.ClickException(f"abtest worker: {exc}") from None
    if not settings.broker_url:
        raise click.ClickException("ABTEST_BROKER_URL is not set: workers need a Redis broker")
    if device is not None:  # fail fast, before Celery and the registry are loaded
        from engines.device import DeviceError, check_device

        try:
            check_device(device)
        except DeviceError as exc:
            raise click.ClickException(f"--device: {exc}") from None
    from .wiring import run_worker

    run_worker(engine, device=device, concurrency=concurrency, settings=settings, loglevel=loglevel)


# --- db ----------------------------------------------------------------------------------

@cli.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="the Alembic revision to migrate to")
def db_upgrade(revision: str) -> None:
    """Create or migrate the schema of ABTEST_DATABASE_URL (safe to run again)."""
    from .db import upgrade

    upgrade(_settings().database_url, revision)
    click.echo(f"database at {revision}", err=True)


@db.command("downgrade")
@click.option("--revision", default="-1", show_default=True,
              help="the revision to go back to: -1 one step, base an empty schema (drops the data)")
def db_downgrade(revision: str) -> None:
    """Undo migrations of ABTEST_DATABASE_URL (one step by default)."""
    from .db import downgrade

    downgrade(_settings().database_url, revision)
    click.echo(f"database downgraded to {revision}", err=True)


@db.command("rebuild-rollups")
@click.option("--experiment", "key", help="only this experiment (default: all)")
def db_rebuild_rollups(key: str | None) -> None:
    """Recompute the report rollups from the request log (after loading requests in bulk)."""
    from .services.experiments import get_experiment
    from .reports.rollups import rebuild

    with common.database() as database, database.transaction() as session:
        try:
            exp_id = get_experiment(session, key).id if key else None
        except ABTestError as exc:
            _fail(exc)
        rebuild(session.connection(), exp_id)
    click.echo(f"rollups rebuilt for {key or 'all experiments'}", err=True)


# --- keys --------------------------------------------------------------------------------

@cli.group()
def keys() -> None:
    """API keys (stored hashed; shown once)."""


@keys.command("create")
@click.option("--scope", type=click.Choice(["admin", "viewer", "sdk"]), required=True,
              help="sdk: assign, infer and send events; viewer: read experiments, reports, audit; admin: everything")
@click.option("--name", required=True, help="a name to recognise the key by: the audit log records it, revoke takes it")
def keys_create(scope: str, name: str) -> None:
    """Create a key and print it, alone, on stdout."""
    from .services.keys import create_key

    try:
        with common.database() as database, database.transaction() as session:
            key = create_key(session, name, scope)
    except ABTestError as exc:
        _fail(exc)
    click.echo(key)


@keys.command("list")
def keys_list() -> None:
    """List keys, tab-separated: prefix, scope, name, active or revoked (never the key itself)."""
    from .services.keys import list_keys

    with common.database() as database, database.session() as session:
        for k in list_keys(session):
            state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
            click.echo(f"{k.prefix}…\t{k.scope}\t{k.name}\t{state}")


@keys.command("revoke")
@click.argument("name")
def keys_revoke(name: str) -> None:
    """Revoke every active key with this name (or key prefix)."""
    from .services.keys import revoke_key

    try:
        with common.database() as database, database.transaction() as session:
            count = revoke_key(session, name)
    except ABTestError as exc:
        _fail(exc)
    click.echo(f"revoked {count} key(s)", err=True)


@cli.command()
@click.option("--users", default=2000, show_default=True, type=int, help="simulated users")
@click.option("--true-effect", "--effect", "effect", default=0.0, show_default=True, type=float,
              help="the simulated true relative effect of V2 INT4 on conversion (0: exactly as good)")
@click.option("--superiority", is_flag=True,
              help="ask whether V2 converts better (superiority) instead of at most 5 %% worse (non-inferiority)")
@click.option("--base-rate", default=0.30, show_default=True, type=float, help="V1 conversion probability")
@click.option("--seed", default=7, show_default=True, type=int, help="random seed of the simulated users")
@click.option("--max-new-tokens", default=8, show_default=True, type=int, help="tokens generated per request")
@click.option("--concurrency", default=32, show_default=True, type=int, help="simulated users in flight")
@click.option("--target", default=None, help="run against this server (URL) instead of starting one")
@click.option("--api-key", envvar="ABTEST_API_KEY", default=None, help="admin key for --target")
@click.option("-o", "--output", default="report.html", show_default=True, help="where to write the HTML report")
def demo(users: int, effect: float, superiority: bool, base_rate: float, seed: int, max_new_tokens: int,
         concurrency: int, target: str | None, api_key: str | None, output: str) -> None:
    """Run a whole experiment: is V2 INT4 good enough to replace V1 FP32? Simulated users, then
    the report's headline and summary, and the HTML report."""
    from .demo import DemoConfig, run_demo

    run_demo(DemoConfig(users=users, effect=effect, base_rate=base_rate, seed=seed, max_new_tokens=max_new_tokens,
                        concurrency=concurrency, target=target, api_key=api_key, report_path=output,
                        decision="superiority" if superiority else "non_inferiority"))


def _mount_report() -> None:
    from .cli_experiments import experiments
    from .cli_layers import layers
    from .cli_plan import plan_command
    from .reports.cli import report

    cli.add_command(experiments)
    cli.add_command(layers)
    cli.add_command(plan_command)
    cli.add_command(report)


_mount_report()


def _mount_optional() -> None:
    """``abtest engines``: the engines' own group, whose ``list`` reads the registry every
    process reads (``ABTEST_ENGINE_REGISTRY``) unless ``--registry`` names another."""
    import copy

    try:
        from engines.cli import engines as engines_group
    except ImportError:  # engines not installed in this environment
        return
    group = copy.copy(engines_group)
    group.commands = dict(engines_group.commands)
    listing = group.commands.get("list")
    if listing is not None:
        listing = group.commands["list"] = copy.copy(listing)
        listing.params = [copy.copy(p) for p in listing.params]
        for param in listing.params:
            if param.name == "registry" and isinstance(param, click.Option):
                param.envvar = "ABTEST_ENGINE_REGISTRY"
                param.show_envvar = True
                param.help = "JSON file of extra engine specs (default: $ABTEST_ENGINE_REGISTRY)."
    cli.add_command(group, "engines")


_mount_optional()


def main() -> None:
    from engines import tune_openmp

    tune_openmp()  # before anything imports torch: the engines run in this process or its children
    cli(prog_name="abtest")


if __name__ == "__main__":
    sys.exit(main())
