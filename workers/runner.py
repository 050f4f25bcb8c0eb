"""The one code path from a dispatched request to an engine result, shared by both modes.

``run_generation`` is what the Celery task runs in a worker and what the embedded thread
executor runs inside the API process. It never raises: the reply is a JSON-ready dict, either
``{"ok": true, "result": {...GenerationResult...}, "worker": ...}`` or
``{"ok": false, "error": {"code", "message"}, "worker": ...}``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from typing import Any

from engines.types import EngineError, GenerationRequest

from .host import EngineHost

__all__ = ["run_generation", "error_reply"]

log = logging.getLogger(__name__)


def error_reply(code: str, message: str, worker: str | None = None) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}, "worker": worker}


def run_generation(host: EngineHost, engine: str, payload: dict[str, Any],
                   deadline: float | None = None) -> dict[str, Any]:
    """Run one request on ``engine``; ``deadline`` is a UNIX time after which nobody waits."""
    if deadline is not None and time.time() > deadline:
        return error_reply("expired", "the caller stopped waiting before the request ran", host.identity)
    try:
        request = GenerationRequest(
            prompt=payload["prompt"], max_new_tokens=int(payload.get("max_new_tokens", 64)),
            temperature=float(payload.get("temperature", 0.0)), top_p=float(payload.get("top_p", 1.0)),
            seed=payload.get("seed"), stop=tuple(payload.get("stop") or ()),
            request_id=payload.get("request_id"),
        )
        future = host.scheduler(engine).submit(request)
        timeout = None if deadline is None else max(0.0, deadline - time.time())
        result = future.result(timeout=timeout)
    except EngineError as exc:
        return error_reply(exc.code, str(exc), host.identity)
    except concurrent.futures.TimeoutError:
        return error_reply("engine_timeout", "the engine did not answer before the deadline", host.identity)
    except Exception as exc:  # an engine bug must fail this request only, with its reason
        log.exception("engine %s failed a request", engine)
        return error_reply("engine_error", f"{type(exc).__name__}: {exc}", host.identity)
    return {"ok": True, "result": dataclasses.asdict(result), "worker": host.identity}
