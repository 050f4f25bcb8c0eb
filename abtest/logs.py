"""Logging set-up: plain text for people, or one JSON object per line for log pipelines.

Structured fields are passed with ``extra=``; in JSON mode every such field (``request_id``,
``experiment``, ``variant``, ``engine``, ``status``, ``latency_ms``, ...) becomes a key, so logs
can be joined to the ``requests`` table by request id.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

__all__ = ["configure_logging", "JsonFormatter"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


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


def configure_logging(level: str, fmt: str) -> None:
    root = logging.getLogger()
    if getattr(root, "_abtest_configured", False):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root._abtest_configured = True  # type: ignore[attr-defined]
