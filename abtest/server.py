"""Run the app under gunicorn (the production WSGI server) from Python."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

__all__ = ["run_gunicorn"]


class _Server(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):  # type: ignore[no-untyped-def]
        from .app import create_app

        return create_app()


def run_gunicorn(*, host: str, port: int, workers: int, threads: int | None = None) -> None:
    """``threads`` per worker defaults to room for every engine's in-flight limit plus the
    threads kept for everything else (see ``abtest.container.RESERVED_THREADS``).

    The settings and the engine registry are checked before gunicorn starts: a bad value or a
    missing or invalid registry file raises :class:`abtest.config.ConfigError` naming it."""
    import os

    from .config import Settings
    from .container import RESERVED_THREADS
    from .logs import gunicorn_logconfig
    from .wiring import check_registry, ensure_sqlite_schema

    settings = Settings.load()
    engines = len(check_registry(settings))
    if threads is None:
        threads = engines * settings.max_inflight_per_engine + RESERVED_THREADS
    os.environ["ABTEST_SERVER_THREADS"] = str(threads)  # the workers' create_app bounds infer calls by it
    if settings.is_sqlite:
        ensure_sqlite_schema(settings.database_url)  # before forking, so workers never race on it
    _Server({
        "bind": f"{host}:{port}", "workers": workers, "threads": threads,
        "worker_class": "gthread", "timeout": 120, "graceful_timeout": 30,
        "accesslog": "-", "loglevel": settings.log_level.lower(),
        "logconfig_dict": gunicorn_logconfig(settings.log_level, settings.log_format),
    }).run()
