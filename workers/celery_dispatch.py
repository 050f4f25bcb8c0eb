"""CeleryDispatcher: ABTEST_BROKER_URL set, engines run in ``abtest worker`` processes.

``submit`` sends the task to the engine's queue; one :class:`ResultListener` thread per
process receives every result from the Redis result backend (Celery's own
``AsyncResult.get`` is not safe across threads). The workers run the same
``workers.runner.submit_generation`` as the embedded mode (``run_generation`` in a Celery task
is that plus a wait).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

import redis

from abtest.config import Settings
from abtest.errors import RateLimited, ServiceUnavailable
from abtest.services.probe import Probe
from engines.spec import load_registry

from .celery_app import TASK_NAME, make_celery, queue_name
from .presence import ConsumerView
from .redis_streams import RedisTokenStream

__all__ = ["CeleryDispatcher", "ResultListener"]

log = logging.getLogger(__name__)
RESULT_PREFIX = "celery-task-meta-"
NO_CONSUMER_RETRY_S = 5  # a worker takes seconds to start and load its engine


class ResultListener:
    """One pattern subscription to the result backend's channels; completes waiting Futures."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=5,
                                          health_check_interval=10)
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celery-results", daemon=True)
        self._thread.start()

    def expect(self, task_id: str) -> Future:
        future: Future = Future()
        with self._lock:
            self._pending[task_id] = future
        return future

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._pending.pop(task_id, None)

    def _complete(self, raw: bytes | str) -> None:
        meta = json.loads(raw)
        with self._lock:
            future = self._pending.pop(meta.get("task_id"), None)
        if future is None or future.done():
            return
        if meta.get("status") == "SUCCESS":
            future.set_result(meta["result"])
        elif meta.get("status") in ("FAILURE", "REVOKED"):
            future.set_result({"ok": False, "error": {"code": "engine_error",
                                                      "message": str(meta.get("result"))}})

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(RESULT_PREFIX + "*")
                self.connected.set()
                self._catch_up()  # results stored while we were not subscribed
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "pmessage":
                        self._complete(message["data"])
                    elif message is None:
                        self._drop_abandoned()
            except (redis.RedisError, OSError) as exc:
                self.connected.clear()
                log.warning("result listener lost Redis (%s); reconnecting", exc)
                self._stop.wait(0.5)

    def fail_pending(self, code: str, message: str) -> None:
        """Answer every waiting caller now (the broker is gone: their results cannot come)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_result({"ok": False, "error": {"code": code, "message": message}})

    def _drop_abandoned(self) -> None:
        """Forget futures whose caller gave up (cancelled on timeout)."""
        with self._lock:
            for task_id in [t for t, f in self._pending.items() if f.done()]:
                del self._pending[task_id]

    def _catch_up(self) -> None:
        with self._lock:
            ids = list(self._pending)
        for task_id in ids:
            raw = self.redis.get(RESULT_PREFIX + task_id)
            if raw is not None:
                self._complete(raw)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)


class CeleryDispatcher:
    mode = "celery"

    def __init__(self, settings: Settings) -> None:
        self.celery = make_celery(settings, publisher=True)
        self.listener = ResultListener(settings.result_backend or settings.broker_url or "")
        self.broker = redis.Redis.from_url(settings.broker_url or "", socket_connect_timeout=0.5, socket_timeout=0.5)
        self.max_queue = settings.queue_limit
        self.log_content = settings.log_content
        self._depth_cache: dict[str, tuple[float, int]] = {}
        pinger = redis.Redis.from_url(settings.broker_url or "", socket_connect_timeout=0.5, socket_timeout=0.5)
        self.probe = Probe("broker", pinger.ping, on_down=lambda: self.listener.fail_pending(
            "broker_unavailable", "the broker (Redis) stopped answering"), stale_s=settings.probe_stale_s)
        self.consumers = ConsumerView(settings.broker_url or "", settings.consumer_stale_s)
        self.engines = tuple(load_registry(settings.engine_registry, settings.checkpoint_dir))
        # streamed requests' tokens: blocking XREADs of at most a second, so a 5 s socket timeout
        self.streams = redis.Redis.from_url(settings.result_backend or settings.broker_url or "",
                                            socket_connect_timeout=1, socket_timeout=5)
        self.listener.connected.wait(0.5)  # a healthy Redis answers in milliseconds

    def submit(self, engine: str, request_id: str, payload: dict[str, Any], timeout: float) -> Future:
        if not self.probe.up() or not self.listener.connected.is_set():
            raise ServiceUnavailable("the broker (Redis) is unreachable", retry_after=1)
        if self.consumers.consumers(queue_name(engine)) == 0:  # nobody would run it: say so now
            raise ServiceUnavailable(f"no worker consumes queue {queue_name(engine)}", code="no_consumer",
                                     retry_after=NO_CONSUMER_RETRY_S,
                                     details={"engine": engine, "queue": queue_name(engine)})
        if self._depth(engine) >= self.max_queue:
            raise RateLimited(f"the queue of engine {engine!r} is full", retry_after=1,
                              details={"engine": engine})
        future = self.listener.expect(request_id)
        try:
            # the message's printable copy of its arguments (shown by Celery's task lines and
            # monitors) names the request, not its prompt, unless content is logged on purpose
            shown = {} if self.log_content else {"argsrepr": f"({request_id!r}, {engine!r}, ...)", "kwargsrepr": "{}"}
            self.celery.send_task(TASK_NAME, args=[request_id, engine, payload, time.time() + timeout],
                                  task_id=request_id, queue=queue_name(engine), expires=timeout, **shown)
        except Exception as exc:  # kombu/redis connection errors: fail fast, never hang
            self.listener.forget(request_id)
            raise ServiceUnavailable(f"the broker (Redis) is unreachable: {type(exc).__name__}",
                                     retry_after=1) from exc
        return future

    def open_stream(self, engine: str, request_id: str, payload: dict[str, Any], timeout: float) -> RedisTokenStream:
        """Send a streamed request: the worker writes its text to the Redis stream of its id."""
        reply = self.submit(engine, request_id, {**payload, "stream": True}, timeout)
        return RedisTokenStream(self.streams, request_id, reply)

    def _depth(self, engine: str) -> int:
        now = time.monotonic()
        hit = self._depth_cache.get(engine)
        if hit is not None and now - hit[0] < 0.2:
            return hit[1]
        try:
            depth = int(self.broker.llen(queue_name(engine)))
        except (redis.RedisError, OSError) as exc:
            raise ServiceUnavailable("the broker (Redis) is unreachable", retry_after=1) from exc
        self._depth_cache[engine] = (now, depth)
        return depth

    def queue_depths(self) -> dict[str, int]:
        depths = {}
        for key in self.broker.scan_iter(match="engine.*", count=100):
            name = key.decode()
            if "\x06" not in name:
                depths[name.removeprefix("engine.")] = int(self.broker.llen(key))
        return depths

    def health(self) -> str:
        """From the probe: answers at once, whatever the broker does."""
        reason = self.probe.reason()
        if reason is not None:
            return f"error: {reason}"
        return "ok" if self.listener.connected.is_set() else "error: result listener disconnected"

    def engine_states(self) -> dict[str, str]:
        """Per registered engine: ready (a worker beat on its queue within the last few seconds),
        no_consumer, or unknown (the broker cannot say; its own check says why)."""
        if not self.probe.up():  # never wait on a broker known to be down (or hung)
            return dict.fromkeys(self.engines, "unknown")
        counts = self.consumers.counts([queue_name(engine) for engine in self.engines])
        return {engine: "unknown" if (n := counts[queue_name(engine)]) is None else ("ready" if n else "no_consumer")
                for engine in self.engines}

    def workers_seen(self) -> dict[str, int | None]:
        """Per registered engine: workers that beat on its queue lately (None: the broker cannot say)."""
        if not self.probe.up():
            return dict.fromkeys(self.engines, None)
        counts = self.consumers.counts([queue_name(engine) for engine in self.engines])
        return {engine: counts[queue_name(engine)] for engine in self.engines}

    def problems(self) -> dict[str, str]:
        """Why each engine that is not ready is not."""
        return {engine: f"no worker consumes queue {queue_name(engine)}"
                for engine, state in self.engine_states().items() if state == "no_consumer"}

    def start_loading(self) -> None:
        pass

    def close(self) -> None:
        self.probe.close()
        self.listener.close()
        self.streams.close()
