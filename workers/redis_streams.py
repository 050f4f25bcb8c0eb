"""Token streams over Redis: a streamed request's text, piece by piece, from a Celery worker to the API.

The API gets a :class:`RedisTokenStream`, a token stream as
:class:`abtest.services.streaming.TokenStream` describes it (the embedded mode's is
:class:`workers.inprocess.QueueStream`). :class:`RedisTokenStream` in the API and
:class:`StreamHub` in the worker: the worker
  appends each delta to a Redis stream named for the request id (``abtest:stream:<id>``)
  and ends it with the reply; the API reads it with blocking ``XREAD`` (no polling). Deltas
  leave the batching thread through one publisher thread that sends what has queued up in a
  pipeline, so the decode loop never waits on the network. The API cancels by publishing the
  request id on ``abtest:cancel``; each worker listens there.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

import redis

__all__ = ["RedisTokenStream", "StreamHub", "stream_key", "CANCEL_CHANNEL"]

log = logging.getLogger(__name__)

CANCEL_CHANNEL = "abtest:cancel"
STREAM_TTL_S = 300  # a stream nobody reads (its API process died) is gone after this
Event = tuple[str, Any]


def stream_key(request_id: str) -> str:
    return f"abtest:stream:{request_id}"


class RedisTokenStream:
    """Celery mode, in the API: the request's Redis stream read with blocking XREAD.

    ``reply`` is the result backend's Future of the same task: it answers a task that ended
    without writing its stream (the worker died, the broker failed it)."""

    def __init__(self, client: redis.Redis, request_id: str, reply: Future) -> None:
        self.redis, self.request_id, self.reply = client, request_id, reply
        self.key = stream_key(request_id)
        self._last = "0-0"
        self._buffer: list[Event] = []
        self._ended = False

    def get(self, timeout: float) -> Event | None:
        if self._buffer:
            return self._buffer.pop(0)
        if self._ended:
            return None
        try:
            # at most a second per read: well inside the client's socket timeout
            found = self.redis.xread({self.key: self._last}, count=256, block=max(1, int(min(timeout, 1.0) * 1000)))
        except (redis.RedisError, OSError):
            log.warning("token stream %s: Redis read failed", self.request_id)
            found = None
        for _, entries in found or ():
            for entry_id, fields in entries:
                self._last = entry_id
                if b"t" in fields:
                    self._buffer.append(("text", fields[b"t"].decode()))
                elif b"r" in fields:
                    self._buffer.append(("reply", json.loads(fields[b"r"])))
                    self._ended = True
        if self._buffer:
            return self._buffer.pop(0)
        if self.reply.done():  # the task ended without its stream's last entry
            self._ended = True
            return ("reply", self.reply.result())
        return None

    def cancel(self) -> None:
        try:
            self.redis.publish(CANCEL_CHANNEL, self.request_id)
        except (redis.RedisError, OSError):
            log.warning("could not cancel %s: Redis unreachable", self.request_id)

    def close(self) -> None:
        try:
            self.redis.delete(self.key)
        except (redis.RedisError, OSError):
            pass  # it expires by itself


class StreamHub:
    """Celery mode, in the worker: publishes deltas and replies, and cancels on request.

    ``sink(request_id)`` is the ``on_text`` of a streamed request; ``end(request_id, reply)``
    closes its stream. ``track`` / ``untrack`` keep the reply Futures that a cancel message on
    :data:`CANCEL_CHANNEL` cancels."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=5)
        self._out: queue.SimpleQueue[tuple[str, dict[str, str]] | None] = queue.SimpleQueue()
        self._live: dict[str, Future] = {}
        self._early: dict[str, float] = {}  # cancelled before they started here: id -> when
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._publish, name="token-publisher", daemon=True),
                         threading.Thread(target=self._listen, name="cancel-listener", daemon=True)]
        for t in self._threads:
            t.start()

    def sink(self, request_id: str):  # type: ignore[no-untyped-def]
        key = stream_key(request_id)
        return lambda delta: self._out.put((key, {"t": delta}))

    def end(self, request_id: str, reply: dict[str, Any]) -> None:
        self._out.put((stream_key(request_id), {"r": json.dumps(reply)}))

    def track(self, request_id: str, reply: Future) -> None:
        with self._lock:
            self._live[request_id] = reply
            early = self._early.pop(request_id, None) is not None
        if early:  # its cancel came while it waited in the queue
            reply.cancel()

    def untrack(self, request_id: str) -> None:
        with self._lock:
            self._live.pop(request_id, None)

    def _publish(self) -> None:
        while True:
            item = self._out.get()
            if item is None:
                return
            batch = [item]
            while True:  # whatever else queued up meanwhile goes in the same round trip
                try:
                    nxt = self._out.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._out.put(None)
                    break
                batch.append(nxt)
            try:
                pipe = self.redis.pipeline(transaction=False)
                for key, fields in batch:
                    pipe.xadd(key, fields)
                for key in {key for key, _ in batch}:
                    pipe.expire(key, STREAM_TTL_S)
                pipe.execute()
            except (redis.RedisError, OSError) as exc:
                log.warning("token publisher lost %d entries: %s", len(batch), exc)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CANCEL_CHANNEL)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self._cancel(message["data"].decode())
            except (redis.RedisError, OSError) as exc:
                log.warning("cancel listener lost Redis (%s); reconnecting", exc)
                self._stop.wait(0.5)

    def _cancel(self, request_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            reply = self._live.get(request_id)
            if reply is None:  # not here (yet): remember it a while, another worker may have it
                self._early = {k: t for k, t in self._early.items() if now - t < STREAM_TTL_S}
                self._early[request_id] = now
        if reply is not None:
            reply.cancel()  # the request leaves its batch at the next decode step

    def close(self) -> None:
        self._stop.set()
        self._out.put(None)
        for t in self._threads:
            t.join(timeout=3)
