"""Flask application factory (the only module besides ``abtest.api`` that imports Flask).

``create_app(overrides)`` layers configuration as defaults, then ``ABTEST_*`` environment
variables, then ``overrides`` (tests), and wires the extensions: the database, the API-key
cache, the assignment service with its exposure writer, and the blueprints.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Mapping
from typing import Any

from flask import Flask

from .config import Settings
from .db import Database, upgrade
from .logs import configure_logging
from .services.assign import Assigner, ConfigCache
from .services.keys import KeyCache, create_key, hash_key
from .services.outcomes import OutcomeLog
from .services.probe import Probe

__all__ = ["create_app", "Services", "RESERVED_THREADS"]

log = logging.getLogger(__name__)

# Under `abtest serve`, server threads that /v1/infer calls may never take all together: they
# answer assign, events, health and the 429s of an overloaded engine at once.
RESERVED_THREADS = 8


class Services:
    """Everything a request handler needs, built once per process (``app.extensions``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.database_url, connect_timeout_s=settings.db_connect_timeout_s,
                           statement_timeout_s=settings.db_statement_timeout_s,
                           pool_timeout_s=settings.db_pool_timeout_s)
        # down within a second of the database failing or hanging; then the request threads
        # stuck on it are freed, and every endpoint answers 503 until a ping succeeds again
        self.db_probe = Probe("database", self.db.ping, on_down=self.db.abort_connections)
        self.db.on_outage(self.db_probe.report)
        self.db.refuse_connects_while(self.db_probe.reason)
        self.keys = KeyCache(settings.cache_ttl_s, settings.key_cache_grace_s)
        self.configs = ConfigCache(self.db, settings.cache_ttl_s, settings.key_cache_grace_s)
        self.outcomes = OutcomeLog(self.db)
        self.assigner = Assigner(self.configs, self.outcomes.write_exposure)
        self._engine_names: frozenset[str] | None = None
        self._inference: Any = None
        self.monitor: Any = None
        self._lock = threading.Lock()

    @property
    def inference(self) -> Any:
        """The inference service, built on first use (it may start engines or a broker client)."""
        if self._inference is None:
            with self._lock:
                if self._inference is None:
                    from workers.dispatch import make_dispatcher

                    from .services.inference import InferenceService

                    threads = self.settings.server_threads
                    self._inference = InferenceService(
                        self.assigner, make_dispatcher(self.settings), self.outcomes, self.settings.infer_timeout_s,
                        max_inflight=self.settings.max_inflight_per_engine,
                        max_inflight_total=threads - min(RESERVED_THREADS, threads // 2) if threads else 0,
                    )
        return self._inference

    def start_engines(self) -> None:
        """Embedded mode: load every registered engine in the background (see /healthz)."""
        if self.settings.embedded:
            self.inference.dispatcher.start_loading()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ready, checks) from what the probes and engines know now: never waits on a dependency.

        Not ready while the database or the broker is down or an engine is still loading; an
        engine that failed to load leaves the rest servable (its calls fail fast, 502)."""
        reason = self.db_probe.reason()
        checks: dict[str, Any] = {"database": "ok" if reason is None else f"error: {reason}"}
        broker = self.broker_health()
        if broker is not None:
            checks["broker"] = broker
        try:
            engines = self.inference.dispatcher.engine_states()
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable engine registry: say so, never 500
            log.exception("health: the engines cannot be listed")
            checks["inference"], engines = f"error: {type(exc).__name__} (see the log)", {}
        if engines:
            checks["engines"] = engines
        ready = all(v == "ok" for k, v in checks.items() if k != "engines") and "loading" not in engines.values()
        return ready, checks

    def broker_health(self) -> str | None:
        """None in embedded mode; else "ok" or the reason the broker is unreachable."""
        if self.settings.embedded:
            return None
        return self.inference.dispatcher.health()

    def is_engine(self, name: str) -> bool:
        if self._engine_names is None:
            from engines.spec import load_registry  # torch-free by contract

            registry = load_registry(self.settings.engine_registry, self.settings.checkpoint_dir)
            self._engine_names = frozenset(registry)
        return name in self._engine_names

    def start_monitor(self) -> None:
        from .services.monitor import GuardrailMonitor, redis_round_lock

        interval = self.settings.guardrail_interval_s
        lock = redis_round_lock(self.settings.broker_url, interval) if self.settings.broker_url else None
        self.monitor = GuardrailMonitor(self.db, interval, lock, on_pause=self.configs.invalidate).start()

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        if self._inference is not None:
            self._inference.close()
            self._inference.dispatcher.close()
        self.outcomes.close()
        self.db_probe.close()
        self.db.dispose()


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    settings = Settings.load(overrides)
    configure_logging(settings.log_level, settings.log_format)
    if settings.is_sqlite and _sqlite_needs_schema(settings.database_url):
        upgrade(settings.database_url)  # the embedded default creates its own schema
    app = Flask("abtest")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    services = Services(settings)
    app.extensions["abtest"] = services
    if settings.bootstrap_admin_key:
        _ensure_key(services, settings.bootstrap_admin_key)
    if settings.guardrail_interval_s > 0:
        services.start_monitor()
    if settings.preload_engines:
        services.start_engines()
    atexit.register(services.close)

    from .api import register

    register(app)
    return app


def _sqlite_needs_schema(url: str) -> bool:
    db = Database(url)
    try:
        return db.is_empty()
    finally:
        db.dispose()


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
