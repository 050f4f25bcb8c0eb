"""The one code path from a dispatched request to an engine result, shared by both modes.

``submit_generation`` is what the embedded dispatcher calls inside the API process, and
``run_generation`` (submit, then wait) is what the Celery task runs in a worker. Neither
raises: the reply is a JSON-ready dict, either
``{"ok": true, "result": {...GenerationResult...}, "worker": ...}`` or
``{"ok": false, "error": {"code", "message"}, "worker": ...}``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from engines.streaming import TextSink
from engines.types import EngineError, GenerationRequest

from .host import EngineHost

__all__ = ["run_generation", "submit_generation", "submit_score", "error_reply"]

log = logging.getLogger(__name__)


def error_reply(code: str, message: str, worker: str | None = None) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}, "worker": worker}


def submit_generation(host: EngineHost, engine: str, payload: dict[str, Any],
                      deadline: float | None = None, on_text: TextSink | None = None) -> Future:
    """Submit one request to ``engine``'s scheduler; a Future of the reply dict (never raises).

    The reply is set by the scheduler's own completion callback, so the caller waits on one
    hand-off only (no extra thread between it and the engine). ``on_text`` (streaming) is
    told each new piece of text on the batching thread, all of them before the reply is set.
    Cancelling the reply (the caller went away) makes the request leave its batch at the next
    decode step.
    """
    if payload.get("task") == "score":  # output-quality scoring: off the batching thread
        return submit_score(host, engine, payload, deadline)
    reply: Future = Future()
    if deadline is not None and time.time() > deadline:
        reply.set_result(error_reply("expired", "the caller stopped waiting before the request ran", host.identity))
        return reply
    try:
        wait_s = None if deadline is None else deadline - time.time()
        scheduler = host.scheduler(engine, wait_s)
        inner = (scheduler.submit(_request(payload), deadline=deadline, on_text=on_text) if on_text
                 else scheduler.submit(_request(payload), deadline=deadline))
    except EngineError as exc:
        reply.set_result(error_reply(exc.code, str(exc), host.identity))
        return reply
    except Exception as exc:  # an engine bug must fail this request only, with its reason
        log.exception("engine %s refused a request", engine)
        reply.set_result(error_reply("engine_error", f"{type(exc).__name__}: {exc}", host.identity))
        return reply

    def done(f: Future) -> None:
        if f.cancelled():
            answer = error_reply("expired", "the caller stopped waiting before the request ran", host.identity)
        else:
            try:
                answer = {"ok": True, "result": dataclasses.asdict(f.result()), "worker": host.identity}
            except EngineError as exc:
                answer = error_reply(exc.code, str(exc), host.identity)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, not raised in the engine
                log.exception("engine %s failed a request", engine)
                answer = error_reply("engine_error", f"{type(exc).__name__}: {exc}", host.identity)
        try:
            reply.set_result(answer)
        except concurrent.futures.InvalidStateError:
            pass  # the caller gave up (cancelled its reply): nobody reads the answer

    def caller_gave_up(r: Future) -> None:
        if r.cancelled() and hasattr(inner, "abandon"):
            inner.abandon()  # leaves the engine's batch at its next decode step

    reply.add_done_callback(caller_gave_up)
    inner.add_done_callback(done)
    return reply


def _request(payload: dict[str, Any]) -> GenerationRequest:
    return GenerationRequest(
        prompt=payload["prompt"], max_new_tokens=int(payload.get("max_new_tokens", 64)),
        temperature=float(payload.get("temperature", 0.0)), top_p=float(payload.get("top_p", 1.0)),
        seed=payload.get("seed"), stop=tuple(payload.get("stop") or ()), request_id=payload.get("request_id"),
    )


def run_generation(host: EngineHost, engine: str, payload: dict[str, Any],
                   deadline: float | None = None, on_text: TextSink | None = None,
                   started: Callable[[Future], None] | None = None) -> dict[str, Any]:
    """Run one request on ``engine`` and wait; ``deadline`` is a UNIX time after which nobody waits.

    ``started`` is handed the reply Future (a streamed request's cancel handle); a reply
    cancelled by the caller answers ``cancelled``."""
    future = submit_generation(host, engine, payload, deadline, on_text)
    if started is not None:
        started(future)
    timeout = None if deadline is None else max(0.0, deadline - time.time())
    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()  # the engine drops the request at its next decode step
        return error_reply("engine_timeout", "the engine did not answer before the deadline", host.identity)
    except concurrent.futures.CancelledError:
        return error_reply("cancelled", "the client went away; the request left its batch", host.identity)


# Scoring runs on its own small pool, never on an engine's batching thread: a score is one
# forward pass, taken under the engine's lock between two batches.
_SCORERS = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="scorer")


def submit_score(host: EngineHost, engine: str, payload: dict[str, Any],
                 deadline: float | None = None) -> Future:
    """Score ``payload["completion"]`` teacher-forced after ``payload["prompt"]`` on ``engine``;
    a Future of ``{"ok": true, "result": ScoreResult.to_dict(), ...}`` or an error reply (never raises)."""

    def run() -> dict[str, Any]:
        if deadline is not None and time.time() > deadline:
            return error_reply("expired", "the caller stopped waiting before the score ran", host.identity)
        try:
            scorer = host.scheduler(engine).engine
            ids = {k: [int(t) for t in payload[k]] for k in ("prompt_ids", "completion_ids") if payload.get(k)}
            result = scorer.score(str(payload["prompt"]), str(payload.get("completion") or ""), **ids)
            return {"ok": True, "result": result.to_dict(), "worker": host.identity}
        except EngineError as exc:
            return error_reply(exc.code, str(exc), host.identity)
        except Exception as exc:  # noqa: BLE001 - a scoring bug fails this score only
            log.exception("engine %s failed to score", engine)
            return error_reply("engine_error", f"{type(exc).__name__}: {exc}", host.identity)

    try:
        return _SCORERS.submit(run)
    except RuntimeError as exc:  # the pool is shut down (interpreter exit)
        reply: Future = Future()
        reply.set_result(error_reply("engine_closed", str(exc), host.identity))
        return reply
