"""Layered configuration: defaults, then ``ABTEST_*`` environment variables, then overrides.

One typed, frozen :class:`Settings` object is the only source of configuration. Every field
can be set from the environment as ``ABTEST_<FIELD NAME IN CAPITALS>``; ``create_app`` and the
CLI build it with :meth:`Settings.load`, and tests pass overrides on top.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Settings", "ConfigError"]

ENV_PREFIX = "ABTEST_"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A setting has a value of the wrong type or outside its range."""


@dataclass(frozen=True)
class Settings:
    # Storage: a SQLite file by default (embedded mode); PostgreSQL as postgresql+psycopg://...
    database_url: str = "sqlite:///var/abtest.sqlite"
    # Celery broker; unset means engines run in-process (embedded mode).
    broker_url: str | None = None
    # Celery result backend; defaults to the broker URL when a broker is set.
    result_backend: str | None = None
    # Where the demo and user checkpoints live, and an optional JSON file of extra engine specs.
    checkpoint_dir: str = "var/checkpoints"
    # Read by every process (API, workers, CLI) and checked at start-up: a missing or invalid
    # file stops `abtest serve`, the app factory and `abtest worker` with a message naming it.
    engine_registry: str | None = None
    # Requests with a larger body get 413.
    max_body_bytes: int = 1_048_576
    # How long /v1/infer waits for an engine before answering 504.
    infer_timeout_s: float = 30.0
    # Celery mode: an engine queue at least this long answers 429 (with Retry-After).
    queue_limit: int = 1024
    # Admission control: at most this many /v1/infer calls wait on one engine in a process;
    # beyond it the call is answered 429 at once. Under `abtest serve` the server's threads
    # also bound all waiting calls together, keeping threads free for everything else.
    max_inflight_per_engine: int = 32
    server_threads: int = 0  # set by `abtest serve` (0: not under it, no process-wide bound)
    # Embedded mode: load every registered engine at start-up (readiness: /healthz is 503 and
    # /v1/infer answers 503 engine_starting until they are loaded), instead of on first use.
    preload_engines: bool = True
    # Database faults: connect and statement timeouts, the wait for a pooled connection, and
    # how long a cached API key keeps working while the database cannot be asked.
    db_connect_timeout_s: float = 2.0
    db_statement_timeout_s: float = 10.0
    db_pool_timeout_s: float = 1.0
    key_cache_grace_s: float = 300.0
    # In-process cache of experiment configs and API keys (other processes see changes after it).
    cache_ttl_s: float = 2.0
    # Sticky bucketing: the server's store of sticky assignments. Unset: the database's
    # sticky_assignments table; a redis:// URL: that Redis (shared with locally evaluating
    # clients that use a RedisStickyStore on it). Either way rows are written with exposures.
    sticky_redis_url: str | None = None
    # GET /v1/sdk/definitions: the refresh interval advertised to clients, and how often a
    # server-sent-event stream checks for a new version.
    definitions_refresh_s: float = 30.0
    definitions_push_check_s: float = 1.0
    # Guardrail checks of running experiments every this many seconds (0 turns them off).
    guardrail_interval_s: float = 300.0
    # Schedules (coverage ramp steps, start_at, stop_at) are applied every this many seconds:
    # a step takes effect within this long after its time (0 turns schedules off).
    schedule_interval_s: float = 30.0
    # When set, an admin API key with this exact value is ensured at start-up (for bootstrapping).
    bootstrap_admin_key: str | None = None
    # Failed authentications: a client address with this many 401s within the window gets 429
    # (with Retry-After, before any key lookup) until the window passes; 0 turns the limit off.
    auth_fail_limit: int = 20
    # The sliding window of failed authentications, in seconds (0 also turns the limit off).
    auth_fail_window_s: float = 60.0
    # Celery mode: a worker counts as consuming its engine's queue for this many seconds after
    # its last heartbeat; with none, /healthz says no_consumer and /v1/infer answers 503 at once.
    consumer_stale_s: float = 5.0
    # Scoring jobs of sampled completions waiting for the quality scorer; a full queue drops the
    # job (counted in the report), it never delays a request.
    quality_queue_size: int = 1024
    # A probe ping of the database or the broker unanswered this long marks it down (a hung
    # server); raise it on a machine so loaded that a healthy server can stall that long.
    probe_stale_s: float = 0.75
    # The web console (/console/): the key that signs its session cookie. Unset: a random key
    # generated once and kept in ``secret_key_file`` (fine for one host; several hosts behind
    # one address must share ABTEST_SECRET_KEY, or each signs the others' visitors out).
    secret_key: str | None = None
    secret_key_file: str = "var/secret_key"
    # How long a console sign-in lasts, in hours; Secure cookies (HTTPS only) even when the
    # request reached the app over plain HTTP (behind a TLS-terminating proxy).
    console_session_hours: float = 12.0
    console_secure_cookie: bool = False
    # The experiment page reloads its live report every this many seconds (0: never).
    console_refresh_s: float = 10.0
    log_level: str = "INFO"
    # "text" for people, "json" for one JSON object per line (request ids as fields).
    log_format: str = "text"
    # Debugging only: put user content (prompts, generated text) in the logs.
    log_content: bool = False

    def __post_init__(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"{ENV_PREFIX}LOG_FORMAT: {self.log_format!r} is not one of "
                              f"{', '.join(LOG_FORMATS)}")
        if str(self.log_level).upper() not in LOG_LEVELS:
            raise ConfigError(f"{ENV_PREFIX}LOG_LEVEL: {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        if not 0 < self.console_session_hours <= 24 * 365:
            raise ConfigError(f"{ENV_PREFIX}CONSOLE_SESSION_HOURS: {self.console_session_hours!r} is not in (0, 8760]")
        if self.console_refresh_s < 0:
            raise ConfigError(f"{ENV_PREFIX}CONSOLE_REFRESH_S: {self.console_refresh_s!r} is negative")

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> "Settings":
        """Defaults, then ``ABTEST_*`` variables from ``environ``, then ``overrides``.

        Relative paths (``checkpoint_dir``, ``engine_registry``, a SQLite file in
        ``database_url``) are made absolute here, against the working directory of this call,
        so a later ``chdir`` (or another thread's) cannot move them."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = _parse(field.name, raw, hints[field.name])
        for name, value in (overrides or {}).items():
            key = name.lower()
            if key not in hints:
                raise ConfigError(f"unknown setting {name!r}")
            values[key] = _parse(key, value, hints[key]) if isinstance(value, str) else value
        return _absolute_paths(cls(**values))

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded(self) -> bool:
        """True when inference runs in-process (no broker configured)."""
        return not self.broker_url


def _parse(name: str, raw: str, hint: Any) -> Any:
    base = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    target = base[0]
    if raw == "" and type(None) in typing.get_args(hint):
        return None
    try:
        if target is bool:
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        return target(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}: cannot read {raw!r} as {target.__name__}") from exc


def _absolute_path(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _absolute_sqlite_url(url: str) -> str:
    """``sqlite:///var/x.sqlite`` -> ``sqlite:////<cwd>/var/x.sqlite`` (also ``sqlite+driver``,
    a ``?query`` kept); in-memory, ``file:`` URI and non-SQLite URLs are returned unchanged."""
    scheme, sep, rest = url.partition(":///")
    if not sep or not (scheme == "sqlite" or scheme.startswith("sqlite+")):
        return url
    path, q, query = rest.partition("?")
    if not path or path == ":memory:" or path.startswith("file:"):
        return url
    return f"{scheme}:///{_absolute_path(path)}{q}{query}"


def _absolute_paths(settings: Settings) -> Settings:
    changes: dict[str, Any] = {"database_url": _absolute_sqlite_url(settings.database_url)}
    if settings.checkpoint_dir:
        changes["checkpoint_dir"] = _absolute_path(settings.checkpoint_dir)
    if settings.engine_registry:
        changes["engine_registry"] = _absolute_path(settings.engine_registry)
    if settings.secret_key_file:
        changes["secret_key_file"] = _absolute_path(settings.secret_key_file)
    return dataclasses.replace(settings, **changes)
