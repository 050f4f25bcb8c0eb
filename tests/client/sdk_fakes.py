"""Test doubles for the client SDK: an in-memory events server behind
``httpx.MockTransport`` (the only place the SDK is tested without a real
server process) and helpers to build clients that never really sleep."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any, Callable

import httpx

BASE_URL = "http://127.0.0.1:8765"
API_KEY = "test-key"


class FakeEventServer:
    """Stores events by ``event_id`` like the real server (idempotent ingest).

    ``script`` holds faults applied to the next POST /v1/events requests,
    one per request, in order:

    * ``"503"`` / ``"500"`` / ``"429:<secs>"``: answer that status *without* storing;
    * ``"store+503"``: store the batch, then answer 503 (a lost acknowledgement);
    * ``"store+timeout"``: store the batch, then raise ``httpx.ReadTimeout``;
    * ``"connect"``: raise ``httpx.ConnectError`` (nothing reaches the server);
    * ``"401"``: refuse the batch for good.
    """

    def __init__(self, max_batch: int = 1000) -> None:
        self.lock = threading.Lock()
        self.store: dict[str, dict[str, Any]] = {}
        self.batches: list[list[dict[str, Any]]] = []  # every POST body, faults included
        self.script: deque[str] = deque()
        self.max_batch = max_batch
        self.reject: Callable[[dict[str, Any]], str | None] = lambda event: None
        self.gate = threading.Event()  # cleared => requests wait until it is set
        self.gate.set()

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/events", request.url
        assert request.headers["Authorization"] == f"Bearer {API_KEY}"
        events = json.loads(request.content)["events"]
        self.gate.wait(10)
        with self.lock:
            self.batches.append(events)
            fault = self.script.popleft() if self.script else None
        if fault == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if fault in ("503", "500", "401"):
            return httpx.Response(int(fault), json={"error": {"code": "x", "message": fault, "details": None}})
        if fault and fault.startswith("429:"):
            return httpx.Response(429, headers={"Retry-After": fault[4:]}, json={"error": {"code": "rate", "message": "slow down", "details": None}})
        if len(events) > self.max_batch:
            return httpx.Response(413, json={"error": {"code": "too_large", "message": "batch too large", "details": None}})
        ack = self._ingest(events)
        if fault == "store+503":
            return httpx.Response(503, text="upstream reset")
        if fault == "store+timeout":
            raise httpx.ReadTimeout("read timed out", request=request)
        return httpx.Response(202, json=ack)

    def _ingest(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        accepted = duplicates = 0
        rejected = []
        with self.lock:
            for index, event in enumerate(events):
                error = self.reject(event)
                if error:
                    rejected.append({"index": index, "error": error})
                elif event["event_id"] in self.store:
                    duplicates += 1
                else:
                    self.store[event["event_id"]] = event
                    accepted += 1
        return {"accepted": accepted, "duplicates": duplicates, "rejected": rejected}

    def batch_sizes(self) -> list[int]:
        with self.lock:
            return [len(b) for b in self.batches]


class SleepRecorder:
    """Injected ``sleep``: records requested delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` (for effects of the background thread)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()
