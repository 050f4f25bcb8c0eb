"""The ``abtest`` command line: serve, db, keys, experiments (and engines, worker, demo)."""

from __future__ import annotations

import contextlib
import getpass
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from .config import Settings
from .errors import ABTestError

if TYPE_CHECKING:
    from .db import Database

__all__ = ["cli", "main"]


def _settings() -> Settings:
    return Settings.load()


@contextlib.contextmanager
def _database(settings: Settings | None = None) -> Iterator[Database]:
    """The database of the settings, disposed when the command is done with it."""
    from .db import Database

    database = Database((settings or _settings()).database_url)
    try:
        yield database
    finally:
        database.dispose()


def _fail(exc: ABTestError) -> None:
    raise click.ClickException(f"{exc.code}: {exc.message}")


@click.group()
@click.version_option(package_name="abtest")
def cli() -> None:
    """abtest: A/B testing for LLM inference engines."""


# --- serve -------------------------------------------------------------------------------

@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="gunicorn worker processes")
@click.option("--threads", default=None, type=int,
              help="threads per worker (default: every engine's in-flight limit plus 8)")
def serve(host: str, port: int, workers: int, threads: int | None) -> None:
    """Run the API under gunicorn (embedded SQLite schema is created on first start)."""
    from .server import run_gunicorn

    run_gunicorn(host=host, port=port, workers=workers, threads=threads)


@cli.command()
@click.option("--engine", required=True, help="engine name, e.g. v1-fp32 or v2-int4")
@click.option("--device", default=None, help="override the spec's device, e.g. cuda:0")
@click.option("--concurrency", default=None, type=int, help="worker threads (default: the batch size, at most 64)")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(engine: str, device: str | None, concurrency: int | None, loglevel: str) -> None:
    """Run a Celery worker for one engine's queue (needs ABTEST_BROKER_URL)."""
    settings = _settings()
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
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    from .db import upgrade

    upgrade(_settings().database_url, revision)
    click.echo(f"database at {revision}", err=True)


@db.command("downgrade")
@click.option("--revision", default="-1", show_default=True)
def db_downgrade(revision: str) -> None:
    from .db import downgrade

    downgrade(_settings().database_url, revision)
    click.echo(f"database downgraded to {revision}", err=True)


@db.command("rebuild-rollups")
@click.option("--experiment", "key", help="only this experiment (default: all)")
def db_rebuild_rollups(key: str | None) -> None:
    """Recompute the report rollups from the request log (after loading requests in bulk)."""
    from .services.experiments import get_experiment
    from .reports.rollups import rebuild

    with _database() as database, database.transaction() as session:
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
@click.option("--scope", type=click.Choice(["admin", "sdk"]), required=True)
@click.option("--name", required=True)
def keys_create(scope: str, name: str) -> None:
    """Create a key and print it, alone, on stdout."""
    from .services.keys import create_key

    try:
        with _database() as database, database.transaction() as session:
            key = create_key(session, name, scope)
    except ABTestError as exc:
        _fail(exc)
    click.echo(key)


@keys.command("list")
def keys_list() -> None:
    from .services.keys import list_keys

    with _database() as database, database.session() as session:
        for k in list_keys(session):
            state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
            click.echo(f"{k.prefix}…\t{k.scope}\t{k.name}\t{state}")


@keys.command("revoke")
@click.argument("name")
def keys_revoke(name: str) -> None:
    """Revoke every active key with this name (or key prefix)."""
    from .services.keys import revoke_key

    try:
        with _database() as database, database.transaction() as session:
            count = revoke_key(session, name)
    except ABTestError as exc:
        _fail(exc)
    click.echo(f"revoked {count} key(s)", err=True)


# --- experiments -------------------------------------------------------------------------

@cli.group()
def experiments() -> None:
    """Configure experiments directly in the database."""


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _print(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@experiments.command("create")
@click.option("-f", "--file", "path", type=click.File("r"), required=True, help="experiment JSON")
def experiments_create(path: Any) -> None:
    from .container import EngineNames
    from .services import experiments as svc

    try:
        payload = json.load(path)
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{path.name}: not valid JSON ({exc})") from exc
    settings = _settings()
    try:
        with _database(settings) as database, database.transaction() as session:
            exp = svc.create_experiment(session, payload, _actor(), EngineNames(settings))
            _print(svc.experiment_view(exp))
    except ABTestError as exc:
        _fail(exc)


@experiments.command("list")
def experiments_list() -> None:
    from .services import experiments as svc

    with _database() as database, database.session() as session:
        for e in svc.list_experiments(session):
            click.echo(f"{e.key}\t{e.status}\tphase {e.phase}\t{e.name}")


@experiments.command("show")
@click.argument("key")
def experiments_show(key: str) -> None:
    from .services import experiments as svc

    try:
        with _database() as database, database.session() as session:
            _print(svc.experiment_view(svc.get_experiment(session, key)))
    except ABTestError as exc:
        _fail(exc)


def _transition_command(action: str) -> None:
    @experiments.command(action, help=f"{action.capitalize()} an experiment.")
    @click.argument("key")
    def command(key: str) -> None:
        from .services import experiments as svc

        try:
            with _database() as database, database.transaction() as session:
                exp = svc.transition(session, svc.get_experiment(session, key, for_update=True), action, _actor())
                click.echo(f"{exp.key}: {exp.status}")
        except ABTestError as exc:
            _fail(exc)


for _action in ("start", "pause", "stop"):
    _transition_command(_action)


@cli.command()
@click.option("--users", default=2000, show_default=True, type=int, help="simulated users")
@click.option("--effect", default=0.18, show_default=True, type=float,
              help="true relative effect of V2 INT4 on conversion")
@click.option("--base-rate", default=0.30, show_default=True, type=float, help="V1 conversion probability")
@click.option("--seed", default=7, show_default=True, type=int)
@click.option("--max-new-tokens", default=8, show_default=True, type=int)
@click.option("--concurrency", default=32, show_default=True, type=int, help="simulated users in flight")
@click.option("--target", default=None, help="run against this server (URL) instead of starting one")
@click.option("--api-key", envvar="ABTEST_API_KEY", default=None, help="admin key for --target")
@click.option("-o", "--output", default="report.html", show_default=True, help="where to write the HTML report")
def demo(users: int, effect: float, base_rate: float, seed: int, max_new_tokens: int, concurrency: int,
         target: str | None, api_key: str | None, output: str) -> None:
    """Run a whole experiment: V2 INT4 vs V1 FP32 with simulated users, then the report."""
    from .demo import DemoConfig, run_demo

    run_demo(DemoConfig(users=users, effect=effect, base_rate=base_rate, seed=seed, max_new_tokens=max_new_tokens,
                        concurrency=concurrency, target=target, api_key=api_key, report_path=output))


def _mount_report() -> None:
    from .reports.cli import report

    cli.add_command(report)


_mount_report()


def _mount_optional() -> None:
    try:
        from engines.cli import engines as engines_group
    except ImportError:  # engines not installed in this environment
        return
    cli.add_command(engines_group, "engines")


_mount_optional()


def main() -> None:
    cli(prog_name="abtest")


if __name__ == "__main__":
    sys.exit(main())
