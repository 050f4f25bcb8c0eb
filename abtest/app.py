"""Flask application factory: the Flask side of the wiring, nothing else.

``create_app(overrides)`` layers configuration as defaults, then ``ABTEST_*`` environment
variables, then ``overrides`` (tests); :func:`abtest.wiring.start_services` builds the services
container (``app.extensions["abtest"]``) with its start-up side effects, and the blueprints of
:mod:`abtest.api` and the web console (:mod:`abtest.console`, at ``/console/``) are registered
on the app. The container's threads stop when it is closed,
or at exit (:mod:`abtest.container`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from .config import Settings
from .logs import configure_logging
from .wiring import start_services

__all__ = ["create_app"]


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    settings = Settings.load(overrides)
    configure_logging(settings.log_level, settings.log_format)
    services = start_services(settings)
    app = Flask("abtest")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["abtest"] = services

    from .api import register
    from .console import register as register_console

    register(app)
    register_console(app)
    return app
