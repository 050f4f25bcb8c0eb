"""Logging set-up: plain text for people, or one JSON object per line for log pipelines.

Structured fields are passed with ``extra=``; in JSON mode every such field (``request_id``,
``experiment``, ``variant``, ``engine``, ``status``, ``latency_ms``, ...) becomes a key, so logs
can be joined to the ``requests`` table by request id. gunicorn's own lines (start-up, access)
go through the same formatter (:func:`gunicorn_logconfig`), so a JSON stream has no plain line.

User content (prompts, generated text) stays out of the logs unless ``content`` is asked for
(``ABTEST_LOG_CONTENT=1``, for debugging): :class:`HideContent` drops what Celery's task lines
carry of a task's arguments and result.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

__all__ = ["configure_logging", "JsonFormatter", "HideContent", "gunicorn_logconfig", "TEXT_FORMAT"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# Celery's task lines: "... succeeded in 0.1s: <the task's result>", and the arguments and the
# result again as the record's ``data``.
_RESULT_TAIL = ": %(return_value)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        body.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            body["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


class HideContent(logging.Filter):
    """Keeps task arguments and results (prompts, generated text) off a handler's lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "data" in vars(record):
            del record.data
        if isinstance(record.args, Mapping) and "return_value" in record.args and isinstance(record.msg, str):
            record.msg = record.msg.replace(_RESULT_TAIL, "")
        return True


def _formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, fmt: str, *, content: bool = False) -> None:
    """One stderr handler on the root logger (once per process)."""
    root = logging.getLogger()
    if getattr(root, "_abtest_configured", False):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_formatter(fmt))
    if not content:
        handler.addFilter(HideContent())
    root.addHandler(handler)
    root.setLevel(level.upper())
    if fmt == "json":
        logging.captureWarnings(True)  # warnings.warn() as log lines, not plain text on stderr
    root._abtest_configured = True  # type: ignore[attr-defined]


def gunicorn_logconfig(level: str, fmt: str) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its error (start-up) and access loggers on stderr, in our format."""
    formatter = {"()": "abtest.logs.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    handler = {"class": "logging.StreamHandler", "formatter": "abtest", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"abtest": formatter},
        "handlers": {"abtest": handler},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["abtest"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["abtest"], "propagate": False},
        },
        "root": {"level": level.upper(), "handlers": []},
    }
