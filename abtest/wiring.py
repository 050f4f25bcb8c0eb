"""Wiring: builds the services container for the settings and runs the start-up side effects.

The only module of ``abtest`` that imports ``workers`` (tests/test_boundaries.py holds it to
that): it picks the dispatcher for the settings, in-process engines in embedded mode or Celery
with a broker, and starts an ``abtest worker``. The imports of ``workers`` are inside the
functions, so the embedded mode never loads celery or redis.

Start-up side effects, each once per process:
    the SQLite schema      created when the embedded database is empty (once per URL)
    the bootstrap key      ``ABTEST_BOOTSTRAP_ADMIN_KEY`` created unless it exists
    the monitor            one thread per container: guardrails and schedules (:meth:`Services.start_monitor`)
    engine preloading      in the background, embedded mode only
Threads stop in :meth:`Services.close`, or at exit (one hook for every container).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .config import ConfigError, Settings
from .container import Services
from .db import Database, upgrade
from .services.inference import Dispatcher
from .services.keys import create_key, hash_key

__all__ = ["make_dispatcher", "build_services", "start_services", "ensure_sqlite_schema", "run_worker",
           "check_registry"]

_SCHEMA_READY: set[str] = set()
_SCHEMA_LOCK = threading.Lock()


def check_registry(settings: Settings) -> dict[str, Any]:
    """The engine specs of ``ABTEST_ENGINE_REGISTRY`` (built-ins without it), read as every
    process reads them; a missing or invalid file raises :class:`ConfigError` naming it."""
    from engines.spec import load_registry

    try:
        return load_registry(settings.engine_registry, settings.checkpoint_dir)
    except ValueError as exc:
        raise ConfigError(f"ABTEST_ENGINE_REGISTRY: {exc}") from None


def make_dispatcher(settings: Settings) -> Dispatcher:
    """Celery with a broker configured, else the engines of the registry in this process."""
    if settings.broker_url:
        from workers.celery_dispatch import CeleryDispatcher

        return CeleryDispatcher(settings)
    from workers.host import EngineHost
    from workers.inprocess import InProcessDispatcher

    return InProcessDispatcher(EngineHost(check_registry(settings)))


def build_services(settings: Settings) -> Services:
    """A container whose dispatcher is chosen by :func:`make_dispatcher`; no threads but its own."""
    return Services(settings, make_dispatcher)


def start_services(settings: Settings) -> Services:
    """The container of an API process, with its start-up side effects done (see the module doc).

    Raises :class:`ConfigError` naming the registry file when it is missing or invalid, so that
    the process stops at start-up instead of answering 500 later."""
    check_registry(settings)
    if settings.is_sqlite:
        ensure_sqlite_schema(settings.database_url)  # the embedded default creates its own schema
    services = build_services(settings)
    try:
        if settings.bootstrap_admin_key:
            _ensure_key(services, settings.bootstrap_admin_key)
        if settings.guardrail_interval_s > 0 or settings.schedule_interval_s > 0:
            services.start_monitor()
        if settings.preload_engines:
            services.start_engines()
    except BaseException:
        services.close()
        raise
    return services


def ensure_sqlite_schema(url: str) -> None:
    """Migrate an empty SQLite database to the head revision; checked once per URL per process
    (again only if its file has gone)."""
    with _SCHEMA_LOCK:
        if url in _SCHEMA_READY and _file_exists(url):
            return
        db = Database(url)
        try:
            empty = db.is_empty()
        finally:
            db.dispose()
        if empty:
            upgrade(url)
        _SCHEMA_READY.add(url)


def _file_exists(url: str) -> bool:
    path = url.split("///", 1)[1] if "///" in url else ""
    return not path or path == ":memory:" or Path(path.split("?", 1)[0]).exists()


def _ensure_key(services: Services, key: str) -> None:
    """Create the bootstrap admin key unless it exists; gunicorn workers may race on it."""
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from .models import ApiKey

    try:
        with services.db.transaction() as session:
            if session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key))) is None:
                create_key(session, "bootstrap-admin", "admin", key=key)
    except IntegrityError:
        pass  # another process created it first


def run_worker(engine: str, *, device: str | None, concurrency: int | None, settings: Settings,
               loglevel: str) -> None:
    """``abtest worker``: load ``engine`` and consume its Celery queue (see :mod:`workers.main`)."""
    from workers.main import run_worker as run

    run(engine, device=device, concurrency=concurrency, settings=settings, loglevel=loglevel)
