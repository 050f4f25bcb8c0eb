"""Celery tasks: thin wrappers that hand ids and payloads to plain functions.

The worker process sets :data:`HOST` once, after start-up and before it consumes anything
(``abtest worker`` loads its engine first; the pool is threads, so nothing forks after torch).
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from .celery_app import TASK_NAME
from .host import EngineHost
from .redis_streams import StreamHub
from .runner import error_reply, run_generation

HOST: EngineHost | None = None
STREAMS: StreamHub | None = None  # streamed requests' tokens (set with HOST)


@shared_task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=False)
def generate(request_id: str, engine: str, payload: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
    """Idempotent: the task id is the request id, and the API writes the outcome row once."""
    if HOST is None:
        return error_reply("engine_unavailable", "this worker has no engine loaded")
    payload = {**payload, "request_id": request_id}
    hub = STREAMS
    if not payload.pop("stream", False) or hub is None:
        return run_generation(HOST, engine, payload, deadline)
    try:  # streamed: each piece of text to the request's Redis stream, then the reply
        reply = run_generation(HOST, engine, payload, deadline, on_text=hub.sink(request_id),
                               started=lambda future: hub.track(request_id, future))
    finally:
        hub.untrack(request_id)
    hub.end(request_id, reply)
    return reply
