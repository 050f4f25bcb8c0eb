"""/v1/infer as a service: assign, dispatch, wait, log the outcome, answer. No HTTP here.

Every request that reaches an engine's queue becomes exactly one ``requests`` row, committed
before the caller gets an answer (see :mod:`abtest.services.outcomes`):

    engine answered                     -> ok          (200)
    engine refused the request          -> rejected    (422 prompt too long / invalid; 429 overloaded)
    engine or worker failed             -> error       (502; the engine's text stays in the log)
    no answer within the timeout        -> timeout     (504)
    queue full                          -> rejected    (429, with Retry-After)
    broker unreachable, engine loading  -> unavailable (503, with Retry-After; not the engine's error)

Admission control comes first: at most ``max_inflight`` calls wait on one engine in this
process (and, under ``abtest serve``, at most ``max_inflight_total`` on all engines together,
so threads stay free for everything else). A call beyond that is answered 429 at once and
writes no row (it never reached an engine; ``abtest_admission_rejected_total`` counts it).
``latency_ms`` is what the client felt inside the API, from the request's arrival (``arrived``)
to its answer; ``engine_ms`` is the engine's part, from dispatch to reply. A call never waits
past its arrival plus the timeout.

Shadow variants: the control engine serves; a copy runs on the shadow engine in the
background and its own row (``shadow = true``, ``output_match``) is written without delaying
the caller.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from ..errors import (ABTestError, RateLimited, ServiceUnavailable, UpstreamError, UpstreamTimeout,
                      ValidationError)
from ..evaluator import Assignment, ExperimentConfig, in_holdout, should_store
from ..prometheus import BATCH_BUCKETS, LATENCY_BUCKETS_MS, Registry
from ..validation.experiments import segment_levels
from .assigner import Assigner
from .layers import HoldoutItem
from .outcomes import OutcomeLog

__all__ = ["InferenceService", "InferParams", "Dispatcher", "TokenStream", "QualityHook", "new_row", "started_at", "log_outcome"]

log = logging.getLogger("abtest.infer")

REJECTED_CODES = {"prompt_too_long", "invalid_request"}
UNAVAILABLE_CODES = {"engine_starting", "broker_unavailable"}


class TokenStream(Protocol):
    """A streamed request's events: ``get`` gives ``("text", delta)`` per piece of decoded text,
    then ``("reply", reply)`` (what ``submit``'s Future gives), or None when nothing came within
    ``timeout``; ``cancel`` makes the request leave its batch at the next decode step."""

    def get(self, timeout: float) -> tuple[str, Any] | None: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


class Dispatcher(Protocol):
    mode: str

    def submit(self, engine: str, request_id: str, payload: dict[str, Any], timeout: float) -> Future: ...
    def open_stream(self, engine: str, request_id: str, payload: dict[str, Any], timeout: float) -> TokenStream: ...
    def queue_depths(self) -> dict[str, int]: ...
    def health(self) -> str: ...
    def engine_states(self) -> dict[str, str]: ...
    def start_loading(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class InferParams:
    prompt: str
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def payload(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed, "stop": list(self.stop)}


def _metrics() -> Registry:
    r = Registry()
    r.counter("abtest_requests_total", "Inference requests by engine, variant and status")
    r.counter("abtest_engine_errors_total", "Failed inference requests by engine and error code")
    r.histogram("abtest_request_latency_ms", "Server-side end-to-end latency of /v1/infer", LATENCY_BUCKETS_MS)
    r.histogram("abtest_batch_size", "Batch size each request ran in", BATCH_BUCKETS)
    r.gauge("abtest_queue_depth", "Requests waiting for each engine")
    r.counter("abtest_shadow_dropped_total", "Shadow copies skipped because the shadow pool was full")
    r.counter("abtest_admission_rejected_total", "Calls answered 429 at once: too many in flight")
    r.counter("abtest_rows_dropped_total", "Rows the database refused, isolated from their group commit")
    return r


class QualityHook(Protocol):
    """Told about finished requests (off the request path: must return at once, never raise)."""

    # ``result``, ``control`` and ``shadow`` are the engines' results (``text``, ``token_ids``,
    # ... of engines.types.GenerationResult), None for a copy that failed.
    def served(self, row: Mapping[str, Any], params: InferParams, result: Mapping[str, Any],
               config: ExperimentConfig, assignment: Assignment) -> None: ...
    def shadowed(self, row: Mapping[str, Any], params: InferParams, control: Mapping[str, Any] | None,
                 shadow: Mapping[str, Any] | None, config: ExperimentConfig, assignment: Assignment) -> None: ...


def _cost_columns(result: Mapping[str, Any], price: float | None) -> dict[str, Any]:
    """The row's finish reason, decode and compute times, and ``cost`` = ``compute_ms`` / 3.6e6 x
    the engine's ``cost_per_hour`` (None without a price or without a compute time)."""
    compute = result.get("compute_ms")
    return {"finish_reason": result.get("finish_reason"), "decode_ms": result.get("decode_ms"),
            "compute_ms": compute,
            "cost": None if compute is None or price is None else compute / 3.6e6 * price}


class InferenceService:
    def __init__(self, assigner: Assigner, dispatcher: Dispatcher, outcomes: OutcomeLog,
                 timeout_s: float, shadow_workers: int = 16, max_inflight: int = 32,
                 max_inflight_total: int = 0, quality: QualityHook | None = None,
                 prices: Mapping[str, float | None] | None = None) -> None:
        """``prices``: engine -> ``cost_per_hour`` (None or absent: no price, so no ``cost``)."""
        self.assigner, self.dispatcher, self.outcomes, self.timeout_s = assigner, dispatcher, outcomes, timeout_s
        self.prices: dict[str, float | None] = dict(prices or {})
        self.quality = quality
        self.metrics = _metrics()
        self._shadow_pool = ThreadPoolExecutor(max_workers=shadow_workers, thread_name_prefix="shadow")
        self._shadow_slots = threading.BoundedSemaphore(shadow_workers * 4)
        self.max_inflight, self.max_inflight_total = max_inflight, max_inflight_total
        self._inflight: dict[str, int] = {}
        self._inflight_lock = threading.Lock()

    def infer(self, experiment: str, unit_id: str, attributes: Mapping[str, Any], params: InferParams,
              arrived: float | None = None) -> dict[str, Any]:
        """``arrived``: the request's arrival (``time.perf_counter()``), default now."""
        t0 = time.perf_counter() if arrived is None else arrived
        assignment, config = self.assigner.assign(experiment, unit_id, attributes, record=False)
        segments = segment_levels(list(config.dimensions), attributes) if config is not None else None
        return self.serve(assignment, config, unit_id, params, t0, segments)[0]

    def serve(self, assignment: Assignment, config: ExperimentConfig | None, unit_id: str, params: InferParams,
              arrived: float, segments: dict[str, str] | None = None) -> tuple[dict[str, Any], Mapping[str, Any]]:
        """Run an assigned request (``config`` None: an engine called directly, outside any
        experiment, whose row has no experiment); the answer's body and the engine's result.
        ``segments``: the unit's levels of the experiment's dimensions, kept with its exposure."""
        self.admit(assignment.engine)
        try:
            return self._serve(unit_id, params, assignment, config, str(uuid.uuid4()), arrived, started_at(arrived),
                               segments)
        finally:
            self.release(assignment.engine)

    def admit(self, engine: str) -> None:
        with self._inflight_lock:
            mine, total = self._inflight.get(engine, 0), sum(self._inflight.values())
            full = mine >= self.max_inflight or 0 < self.max_inflight_total <= total
            if not full:
                self._inflight[engine] = mine + 1
        if full:
            self.metrics.inc("abtest_admission_rejected_total", engine=engine)
            raise RateLimited(f"too many requests in flight for engine {engine!r}; retry shortly",
                              retry_after=1, details={"engine": engine})

    def release(self, engine: str) -> None:
        with self._inflight_lock:
            self._inflight[engine] -= 1

    def _serve(self, unit_id: str, params: InferParams, assignment: Assignment, config: ExperimentConfig | None,
               request_id: str, t0: float, started: datetime,
               segments: dict[str, str] | None = None) -> tuple[dict[str, Any], Mapping[str, Any]]:
        experiment = assignment.experiment
        row = new_row(request_id, assignment, config, unit_id, started)
        if segments is not None:
            row["segments"] = segments  # the exposure's, not a request column: _finish takes it off
        shadow = self.start_shadow(assignment, config, unit_id, params)
        control: Mapping[str, Any] | None = None
        try:
            reply = self._call(assignment.engine, request_id, params, row, t0)
            if not reply.get("ok"):
                raise self.failed(row, t0, reply["error"])
            result = reply["result"]
            control = result
        except ABTestError as exc:
            self.dispatch_failed(row, t0, exc)
            raise
        finally:
            if shadow is not None:
                self.compare_later(shadow, control, params, config, assignment)
        latency = self.finish(row, t0, "ok", None, result)
        self.tell_quality("served", row, params, result, config, assignment)
        log.info("infer ok request_id=%s engine=%s", request_id, assignment.engine, extra={
            "request_id": request_id, "experiment": experiment, "unit_id": unit_id, "variant": assignment.variant,
            "engine": assignment.engine, "status": "ok", "http_status": 200, "latency_ms": round(latency, 3),
            "batch_size": result["batch_size"]})
        return {"request_id": request_id, "experiment": experiment, "variant": assignment.variant,
                "engine": assignment.engine, "text": result["text"], "prompt_tokens": result["prompt_tokens"],
                "completion_tokens": result["completion_tokens"], "latency_ms": round(latency, 3),
                "ttft_ms": round(result["ttft_ms"], 3), "queue_ms": round(result["queue_ms"], 3),
                "batch_size": result["batch_size"]}, result

    def dispatch_failed(self, row: dict[str, Any], t0: float, exc: ABTestError) -> None:
        """Log the row of a request whose dispatch failed before an engine decided (an error
        an engine decided carries its request id already, and its row is written)."""
        if exc.request_id is None:
            status = "timeout" if isinstance(exc, UpstreamTimeout) else (
                "rejected" if isinstance(exc, RateLimited) else
                "unavailable" if isinstance(exc, ServiceUnavailable) else "error")
            self.finish(row, t0, status, exc.code)
            exc.request_id = row["request_id"]
            log_outcome(row, status, exc.status, exc.code, exc.message)

    def tell_quality(self, what: str, *args: Any) -> None:
        if self.quality is None or args[-2] is None:  # args[-2] is the config: None outside experiments
            return
        try:
            getattr(self.quality, what)(*args)
        except Exception:  # noqa: BLE001 - scoring must never affect a user's request
            log.exception("quality hook %s failed", what)

    def _call(self, engine: str, request_id: str, params: InferParams, row: dict[str, Any],
              t0: float) -> dict[str, Any]:
        """Dispatch and wait until the arrival-based deadline; ``row["engine_ms"]`` is the wait."""
        remaining = max(0.0, t0 + self.timeout_s - time.perf_counter())
        sent = time.perf_counter()
        future = self.dispatcher.submit(engine, request_id, params.payload(), remaining)
        try:  # submit may have taken part of the time (a cold engine): the deadline stays put
            return future.result(timeout=max(0.0, t0 + self.timeout_s - time.perf_counter()))
        except FutureTimeout:
            future.cancel()  # embedded: the engine drops the request at its next decode step
            raise UpstreamTimeout(f"engine {engine!r} did not answer within {self.timeout_s:g}s",
                                  details={"engine": engine}) from None
        finally:
            row["engine_ms"] = (time.perf_counter() - sent) * 1000

    def failed(self, row: dict[str, Any], t0: float, error: Mapping[str, str]) -> ABTestError:
        code, message = error.get("code", "engine_error"), error.get("message", "")
        details = {"engine": row["engine"], "engine_code": code}
        if code in REJECTED_CODES:
            exc: ABTestError = ValidationError("prompt", message, details=details, code=code)
            status = "rejected"
        elif code == "overloaded":
            exc, status = RateLimited(message, details=details, retry_after=1), "rejected"
        elif code in ("engine_timeout", "expired"):
            exc, status = UpstreamTimeout(message, details=details), "timeout"
        elif code in UNAVAILABLE_CODES:
            exc, status = ServiceUnavailable(message, details=details, retry_after=1), "unavailable"
        else:  # an engine's internal text is for the log, not for clients
            exc = UpstreamError(f"engine {row['engine']!r} failed; look up request id {row['request_id']} "
                                "in the service log", details=details)
            status = "error"
        self.finish(row, t0, status, code)
        exc.request_id = row["request_id"]
        log_outcome(row, status, exc.status, code, message)
        return exc

    def finish(self, row: dict[str, Any], t0: float, status: str, code: str | None,
                result: Mapping[str, Any] | None = None) -> float:
        latency = (time.perf_counter() - t0) * 1000
        row.update(status=status, error_code=code, latency_ms=latency,
                   finished_at=row["started_at"] + timedelta(milliseconds=latency))
        if result is not None:
            row.update(queue_ms=result["queue_ms"], ttft_ms=result["ttft_ms"], prompt_tokens=result["prompt_tokens"],
                       completion_tokens=result["completion_tokens"], batch_size=result["batch_size"],
                       **_cost_columns(result, self.prices.get(row["engine"])))
            self.metrics.observe("abtest_batch_size", result["batch_size"], engine=row["engine"])
        segments, sticky = row.pop("segments", None), bool(row.pop("sticky_fresh", False))
        held = row.pop("holdout_layer", None)
        exposure: tuple[Any, ...] | None = (
            (row["experiment_id"], row["phase"], row["unit_id"], row["variant"], row["started_at"], segments, sticky)
            if row["in_experiment"] else None)  # committed with its outcome row
        if held is not None:
            exposure = HoldoutItem(row["experiment_id"], row["phase"], row["unit_id"], held, row["started_at"])
        # the commit may take what is left of the caller's timeout, plus at most a second
        self.outcomes.write(row, exposure, timeout=min(5.0, max(1.0, t0 + self.timeout_s + 0.9 - time.perf_counter())))
        self.metrics.inc("abtest_requests_total", engine=row["engine"], variant=row["variant"] or "", status=status)
        self.metrics.observe("abtest_request_latency_ms", latency, engine=row["engine"])
        if code is not None and status in ("error", "timeout"):
            self.metrics.inc("abtest_engine_errors_total", engine=row["engine"], code=code)
        return latency

    # --- shadow copies --------------------------------------------------------------------

    def start_shadow(self, assignment: Assignment, config: ExperimentConfig | None, unit_id: str,
                      params: InferParams) -> Future | None:
        if assignment.shadow_engine is None or config is None:
            return None
        if not self._shadow_slots.acquire(blocking=False):
            self.metrics.inc("abtest_shadow_dropped_total", engine=assignment.shadow_engine)
            return None
        row = {"request_id": str(uuid.uuid4()), "experiment_id": config.id, "phase": config.phase,
               "variant": assignment.variant, "engine": assignment.shadow_engine, "unit_id": unit_id,
               "in_experiment": assignment.in_experiment, "shadow": True,
               "started_at": datetime.now(timezone.utc)}
        return self._shadow_pool.submit(self._run_shadow, row, params)  # see compare_later

    def _run_shadow(self, row: dict[str, Any], params: InferParams) -> tuple[dict[str, Any], dict[str, Any] | None]:
        t0 = time.perf_counter()
        try:
            reply = self.dispatcher.submit(row["engine"], row["request_id"], params.payload(),
                                           self.timeout_s).result(timeout=self.timeout_s)
        except (ABTestError, FutureTimeout) as exc:
            reply = {"ok": False, "error": {"code": "engine_timeout" if isinstance(exc, FutureTimeout) else exc.code}}
        latency = (time.perf_counter() - t0) * 1000
        ok = bool(reply.get("ok"))
        code = None if ok else reply["error"].get("code", "engine_error")
        status = "ok" if ok else ("timeout" if code in ("engine_timeout", "expired") else "error")
        row.update(status=status, error_code=code, latency_ms=latency,
                   finished_at=row["started_at"] + timedelta(milliseconds=latency))
        if ok:
            r = reply["result"]
            row.update(queue_ms=r["queue_ms"], ttft_ms=r["ttft_ms"], prompt_tokens=r["prompt_tokens"],
                       completion_tokens=r["completion_tokens"], batch_size=r["batch_size"],
                       **_cost_columns(r, self.prices.get(row["engine"])))
        return row, reply["result"] if ok else None

    def compare_later(self, shadow: Future, control: Mapping[str, Any] | None, params: InferParams,
                       config: ExperimentConfig, assignment: Assignment) -> None:
        def done(f: Future) -> None:
            self._shadow_slots.release()
            try:
                row, copy = f.result()
            except Exception:  # the shadow path must never affect anything else
                log.exception("shadow copy failed")
                return
            row["output_match"] = None if copy is None or control is None else copy["text"] == control["text"]
            self.outcomes.write_nowait(row)
            self.metrics.inc("abtest_requests_total", engine=row["engine"], variant=row["variant"] or "",
                             status=f"shadow_{row['status']}")
            self.tell_quality("shadowed", row, params, control, copy, config, assignment)

        shadow.add_done_callback(done)

    def render_metrics(self) -> str:
        for table, n in self.outcomes.dropped.items():
            self.metrics.set("abtest_rows_dropped_total", n, table=table)
        try:
            for engine, depth in self.dispatcher.queue_depths().items():
                self.metrics.set("abtest_queue_depth", depth, engine=engine)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the broker is down
            log.warning("queue depths unavailable")
        return self.metrics.render()

    def close(self) -> None:
        self._shadow_pool.shutdown(wait=True)


def started_at(arrived: float) -> datetime:
    """The wall-clock time of an arrival measured with ``time.perf_counter()``."""
    return datetime.now(timezone.utc) - timedelta(seconds=time.perf_counter() - arrived)


def new_row(request_id: str, assignment: Assignment, config: ExperimentConfig | None, unit_id: str,
            started: datetime) -> dict[str, Any]:
    """A request row before its outcome; without ``config`` (an engine called directly) it
    belongs to no experiment."""
    return {"request_id": request_id, "experiment_id": config.id if config else None,
            "phase": config.phase if config else None, "variant": assignment.variant if config else None,
            "engine": assignment.engine, "unit_id": unit_id, "in_experiment": assignment.in_experiment and config is not None,
            "shadow": False, "started_at": started,
            # not columns: whether the exposure stores a fresh sticky assignment, and the layer whose
            # holdout kept the unit on the control (a holdout exposure); finish takes them off
            "sticky_fresh": config is not None and should_store(config, assignment),
            "holdout_layer": config.layer if config is not None and in_holdout(assignment) else None}


def log_outcome(row: Mapping[str, Any], status: str, http_status: int, code: str | None, message: str) -> None:
    """One line per failed request: a client's 4xx at INFO, the service's 5xx at WARNING."""
    level = logging.WARNING if http_status >= 500 else logging.INFO
    log.log(level, "infer %s %d request_id=%s engine=%s code=%s: %s", status, http_status, row["request_id"],
            row["engine"], code, message, extra={
                "request_id": row["request_id"], "unit_id": row["unit_id"], "variant": row["variant"],
                "engine": row["engine"], "status": status, "http_status": http_status, "error_code": code,
                "latency_ms": round(row.get("latency_ms") or 0.0, 3)})
