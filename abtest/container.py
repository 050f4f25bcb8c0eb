"""The services container: everything a request handler, a CLI command or a worker needs.

No Flask here and no ``workers``: how requests reach the engines is a :class:`Dispatcher`
built by the factory the container is given (:func:`abtest.wiring.make_dispatcher`), so this
module imports neither celery nor redis nor the engines' runtime.

Every container is *live* from construction until :meth:`Services.close`; one ``atexit`` hook
per process (registered by the first container) closes the containers still live at exit, so
their threads (outcome log, probes, guardrail monitor, engines) stop cleanly however many
containers the process built.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import Settings
from .db import Database
from .services.assigner import Assigner, ConfigCache
from .services.definitions import Definitions
from .services.inference import Dispatcher, InferenceService
from .services.keys import KeyCache
from .services.outcomes import OutcomeLog
from .services.probe import Probe
from .services.quality import QualityService
from .services.sticky import server_sticky

if TYPE_CHECKING:
    from .services.monitor import GuardrailMonitor

__all__ = ["Services", "EngineNames", "DispatcherFactory", "RESERVED_THREADS", "live_containers", "close_all"]

log = logging.getLogger(__name__)

# Under `abtest serve`, server threads that /v1/infer calls may never take all together: they
# answer assign, events, health and the 429s of an overloaded engine at once.
RESERVED_THREADS = 8

DispatcherFactory = Callable[[Settings], Dispatcher]


class EngineNames:
    """``name in names``: is ``name`` a registered engine? Reads the registry once, on first use,
    without loading any engine (``engines.spec`` is torch-free by contract)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._specs: dict[str, Any] | None = None

    def __call__(self, name: str) -> bool:
        return name in self.specs()

    def specs(self) -> dict[str, Any]:
        """The registry's engine specs (``engines.spec.EngineSpec``) by name."""
        if self._specs is None:
            from engines.spec import load_registry

            self._specs = dict(load_registry(self._settings.engine_registry, self._settings.checkpoint_dir))
        return self._specs


class Services:
    """Built once per process by :func:`abtest.wiring.start_services` (``app.extensions["abtest"]``)."""

    def __init__(self, settings: Settings, make_dispatcher: DispatcherFactory | None = None) -> None:
        self.settings = settings
        self.db = Database(settings.database_url, connect_timeout_s=settings.db_connect_timeout_s,
                           statement_timeout_s=settings.db_statement_timeout_s,
                           pool_timeout_s=settings.db_pool_timeout_s)
        # down within a second of the database failing or hanging; then the request threads
        # stuck on it are freed, and every endpoint answers 503 until a ping succeeds again
        self.db_probe = Probe("database", self.db.ping, on_down=self.db.abort_connections,
                              stale_s=self.settings.probe_stale_s)
        self.db.on_outage(self.db_probe.report)
        self.db.refuse_connects_while(self.db_probe.reason)
        self.keys = KeyCache(settings.cache_ttl_s, settings.key_cache_grace_s)
        self.configs = ConfigCache(self.db, settings.cache_ttl_s, settings.key_cache_grace_s)
        self.outcomes = OutcomeLog(self.db)
        self.assigner = Assigner(self.configs, self.outcomes.write_exposure, server_sticky(settings, self.db))
        self.definitions = Definitions(self.db, settings.cache_ttl_s)
        self.is_engine = EngineNames(settings)
        self.monitor: GuardrailMonitor | None = None
        self.quality: QualityService | None = None  # built with the inference service
        self._make_dispatcher = make_dispatcher
        self._inference: InferenceService | None = None
        self._lock = threading.Lock()
        self._closed = False
        _track(self)

    @property
    def inference(self) -> InferenceService:
        """The inference service, built on first use (it may start engines or a broker client)."""
        if self._inference is None:
            with self._lock:
                if self._inference is None:
                    if self._make_dispatcher is None:
                        raise RuntimeError("this container has no dispatcher factory (see abtest.wiring)")
                    threads = self.settings.server_threads
                    from engines.spec import load_registry  # torch-free; the engines' prices

                    specs = load_registry(self.settings.engine_registry, self.settings.checkpoint_dir)
                    dispatcher = self._make_dispatcher(self.settings)
                    self.quality = QualityService(dispatcher, self.db, self.settings.infer_timeout_s,
                                                  queue_size=self.settings.quality_queue_size)
                    self._inference = InferenceService(
                        self.assigner, dispatcher, self.outcomes,
                        self.settings.infer_timeout_s, max_inflight=self.settings.max_inflight_per_engine,
                        max_inflight_total=threads - min(RESERVED_THREADS, threads // 2) if threads else 0,
                        quality=self.quality, prices={name: spec.cost_per_hour for name, spec in specs.items()},
                    )
        return self._inference

    def start_engines(self) -> None:
        """Embedded mode: load every registered engine in the background (see /healthz)."""
        if self.settings.embedded:
            self.inference.dispatcher.start_loading()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ready, checks) from what the probes and engines know now: never waits on a dependency.

        ``checks["engines"]`` says per engine ``ready``, ``loading``, ``idle`` (embedded, loads on
        first use), ``failing`` (its last load failed), ``no_consumer`` (Celery: no worker beat
        on its queue within ``consumer_stale_s``) or ``unknown`` (the broker cannot say), and
        ``checks["engine_problems"]`` why, per engine that is failing or has no consumer. Not
        ready while the database or the broker is down or an engine is still loading; an engine
        that fails or has no consumer leaves the rest servable (its calls fail fast: 502, 503)."""
        reason = self.db_probe.reason()
        checks: dict[str, Any] = {"database": "ok" if reason is None else f"error: {reason}"}
        broker = self.broker_health()
        if broker is not None:
            checks["broker"] = broker
        problems: dict[str, str] = {}
        try:
            dispatcher = self.inference.dispatcher
            engines = dispatcher.engine_states()
            problems = dict(getattr(dispatcher, "problems", dict)())
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable engine registry: say so, never 500
            log.exception("health: the engines cannot be listed")
            checks["inference"], engines = f"error: {type(exc).__name__} (see the log)", {}
        if engines:
            checks["engines"] = engines
        if problems:
            checks["engine_problems"] = problems
        ready = (all(v == "ok" for k, v in checks.items() if k not in ("engines", "engine_problems"))
                 and "loading" not in engines.values())
        return ready, checks

    def broker_health(self) -> str | None:
        """None in embedded mode; else "ok" or the reason the broker is unreachable."""
        if self.settings.embedded:
            return None
        return self.inference.dispatcher.health()

    def start_monitor(self) -> None:
        """Start the monitor thread, guardrails and schedules (once: a second call does nothing)."""
        with self._lock:
            if self.monitor is not None or self._closed:
                return
            from .services.monitor import GuardrailMonitor, redis_round_lock

            interval = self.settings.guardrail_interval_s
            lock = redis_round_lock(self.settings.broker_url, interval) if self.settings.broker_url else None
            self.monitor = GuardrailMonitor(self.db, interval, lock, on_pause=self._paused,
                                            schedule_interval_s=self.settings.schedule_interval_s).start()

    def _paused(self, key: str | None = None) -> None:
        self.configs.invalidate(key)
        self.definitions.invalidate()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop every thread this container started and dispose the database (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _untrack(self)
        if self.monitor is not None:
            self.monitor.stop()
        if self._inference is not None:
            self._inference.close()
            if self.quality is not None:  # after the shadows, before the engines and the database
                self.quality.close()
            self._inference.dispatcher.close()
        self.outcomes.close()
        self.db_probe.close()
        self.db.dispose()


# --- the live containers of this process, closed at exit by one hook ---------------------

_LIVE: dict[int, Services] = {}  # id -> container, in creation order
_LIVE_LOCK = threading.Lock()
_HOOKED = False


def _track(services: Services) -> None:
    global _HOOKED
    with _LIVE_LOCK:
        _LIVE[id(services)] = services
        if not _HOOKED:
            atexit.register(close_all)
            _HOOKED = True


def _untrack(services: Services) -> None:
    with _LIVE_LOCK:
        _LIVE.pop(id(services), None)


def live_containers() -> list[Services]:
    """The containers of this process not closed yet, oldest first."""
    with _LIVE_LOCK:
        return list(_LIVE.values())


def close_all() -> None:
    """Close every live container, newest first (the process's one ``atexit`` hook)."""
    for services in reversed(live_containers()):
        try:
            services.close()
        except Exception:  # noqa: BLE001 - one failing close must not keep the others running
            log.exception("closing a services container failed")
