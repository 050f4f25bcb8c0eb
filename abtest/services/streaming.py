"""Streamed inference: a request's text handed on as its engine decodes it. No HTTP here.

:func:`open_stream` does what :meth:`InferenceService.serve` does up to the first piece of
text: admission, dispatch (``Dispatcher.open_stream``), and a wait, bounded by the request's
deadline, for the first event. Whatever fails by then raises, with its outcome row written as
/v1/infer writes it, so the HTTP layer can still answer with a status. What it returns, a
:class:`StreamedRequest`, yields the text (:meth:`StreamedRequest.events`) and writes the one
outcome row when the stream ends:

    the engine finished                 -> ok         ``ttft_ms``: arrival to the first text
                                                      handed to the server (see below)
    the client went away (``close``)    -> cancelled  the request leaves its batch at the next
                                                      decode step (``client_disconnected``)
    the deadline passed mid-stream      -> timeout    (an error event, the request cancelled)
    the engine failed mid-stream        -> error      (an error event)

``ttft_ms`` of a streamed row is the time from the request's arrival to the moment the first
piece of text was written out: the generator resumes after its consumer (the WSGI server)
wrote what it yielded, and that resumption is timed. A cancelled request is not an engine
error (:mod:`abtest.reports.statuses`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from typing import Any

from ..errors import ABTestError, UpstreamTimeout
from ..evaluator import Assignment, ExperimentConfig
from .inference import InferenceService, InferParams, TokenStream, log_outcome, new_row, started_at

__all__ = ["open_stream", "StreamedRequest", "KEEPALIVE_S"]

log = logging.getLogger("abtest.infer")

KEEPALIVE_S = 10.0  # an idle stream yields ("keepalive", None) this often, for proxies


def open_stream(service: InferenceService, assignment: Assignment, config: ExperimentConfig | None,
                unit_id: str, params: InferParams, arrived: float) -> "StreamedRequest":
    """Dispatch a streamed request and wait for its first event (see the module doc)."""
    engine = assignment.engine
    service.admit(engine)
    request_id = str(uuid.uuid4())
    row = new_row(request_id, assignment, config, unit_id, started_at(arrived))
    sent = time.perf_counter()
    try:
        stream = service.dispatcher.open_stream(engine, request_id, params.payload(),
                                                max(0.0, arrived + service.timeout_s - sent))
    except BaseException as exc:
        if isinstance(exc, ABTestError):
            service.dispatch_failed(row, arrived, exc)
        service.release(engine)
        raise
    served = StreamedRequest(service, stream, assignment, config, params, row, arrived, sent)
    served.shadow = service.start_shadow(assignment, config, unit_id, params)  # a shadow variant's copy
    try:
        served.first = served.next_event()  # raises, its row written, when it fails before any text
    except ABTestError:
        raise  # its row is written and its slot released
    except BaseException:
        served.close()
        raise
    return served


class StreamedRequest:
    """One streamed request after its first event: iterate :meth:`events`; :meth:`close` at
    the end whatever happened (a client that left: the request is cancelled)."""

    def __init__(self, service: InferenceService, stream: TokenStream, assignment: Assignment,
                 config: ExperimentConfig | None, params: InferParams, row: dict[str, Any], t0: float,
                 sent: float) -> None:
        self.service, self.stream, self.assignment, self.config = service, stream, assignment, config
        self.params, self.row, self.t0, self.sent = params, row, t0, sent
        self.request_id: str = row["request_id"]
        self.first: tuple[str, Any] = ("keepalive", None)
        self.result: Mapping[str, Any] | None = None
        self._first_out: float | None = None
        self.shadow: Future | None = None
        self._ended = False
        self._lock = threading.Lock()

    @property
    def variant(self) -> str | None:
        return self.row["variant"]

    @property
    def engine(self) -> str:
        return self.assignment.engine

    def next_event(self) -> tuple[str, Any]:
        """The next ``("text", delta)`` or ``("done", result)``, or ``("keepalive", None)`` after
        :data:`KEEPALIVE_S` of silence; raises the request's error (its row written)."""
        deadline = self.t0 + self.service.timeout_s
        quiet_from = time.perf_counter()
        while True:
            now = time.perf_counter()
            left = deadline - now
            if left <= 0:
                self.stream.cancel()
                exc = UpstreamTimeout(f"engine {self.engine!r} did not finish within {self.service.timeout_s:g}s",
                                      details={"engine": self.engine})
                self._end("timeout", exc)
                raise exc
            quiet = now - quiet_from
            if quiet >= KEEPALIVE_S:
                return ("keepalive", None)
            event = self.stream.get(min(left, KEEPALIVE_S - quiet))
            if event is None:
                continue
            kind, value = event
            if kind == "text":
                return event
            if not value.get("ok"):
                self.row["engine_ms"] = (time.perf_counter() - self.sent) * 1000
                with self._lock:
                    self._ended = True
                self._stopped()
                raise self.service.failed(self.row, self.t0, value["error"])
            self.result = value["result"]
            return ("done", self.result)

    def events(self) -> Iterator[tuple[str, Any]]:
        """The first event, then the rest until ``("done", result)``; the row is written before
        ``done`` is handed out. Raises an error that came mid-stream (its row written)."""
        event = self.first
        while True:
            kind, value = event
            if kind == "done":
                self._end("ok", None)
                yield event
                return
            yield event
            if kind == "text" and self._first_out is None:
                self._first_out = time.perf_counter()  # resumed: the server wrote that first text
            event = self.next_event()

    def close(self) -> None:
        """End the request: if its stream had not ended, the client went away (cancelled)."""
        with self._lock:
            ended = self._ended
        if not ended:
            self.stream.cancel()  # the engine drops it at its next decode step
            self._end("cancelled", None)

    # ------------------------------------------------------------------------------------

    def _end(self, status: str, exc: ABTestError | None) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self.row["engine_ms"] = (time.perf_counter() - self.sent) * 1000
        svc = self.service
        try:
            if status == "ok":
                result = dict(self.result or {})
                if self._first_out is not None:
                    result["ttft_ms"] = (self._first_out - self.t0) * 1000
                else:  # an empty completion: nothing went out before the end
                    result["ttft_ms"] = (time.perf_counter() - self.t0) * 1000
                latency = svc.finish(self.row, self.t0, "ok", None, result)
                svc.tell_quality("served", self.row, self.params, self.result, self.config, self.assignment)
                log.info("infer ok request_id=%s engine=%s (streamed)", self.request_id, self.engine, extra={
                    "request_id": self.request_id, "unit_id": self.row["unit_id"], "variant": self.variant,
                    "engine": self.engine, "status": "ok", "http_status": 200, "latency_ms": round(latency, 3),
                    "batch_size": result.get("batch_size")})
            else:
                if self._first_out is not None:
                    self.row["ttft_ms"] = (self._first_out - self.t0) * 1000
                code = "client_disconnected" if status == "cancelled" else exc.code if exc else None
                try:
                    svc.finish(self.row, self.t0, status, code)
                except ABTestError as failed:  # nobody to tell: the client is gone or told already
                    log.warning("stream %s: its %s row was not written: %s", self.request_id, status, failed.message)
                if exc is not None:
                    exc.request_id = self.request_id
                log_outcome(self.row, status, 499 if status == "cancelled" else exc.status if exc else 500,
                            code, "the client went away mid-stream" if status == "cancelled" else
                            exc.message if exc else "")
        finally:
            self._stopped()

    def _stopped(self) -> None:
        try:
            self.stream.close()
            if self.shadow is not None:  # compared with what was served (nothing unless ok)
                self.service.compare_later(self.shadow, self.result if self.row.get("status") == "ok" else None,
                                            self.params, self.config, self.assignment)  # type: ignore[arg-type]
        finally:
            self.service.release(self.engine)
