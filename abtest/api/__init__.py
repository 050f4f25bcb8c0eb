"""HTTP API v1: blueprints, authentication, and the one error handler."""

from __future__ import annotations

from flask import Flask

from . import assign, errors, events, experiments, gate, health, infer, reports

__all__ = ["register"]


def register(app: Flask) -> None:
    errors.init_app(app)
    gate.init_app(app)
    for module in (health, experiments, assign, events, infer, reports):
        app.register_blueprint(module.bp)
