"""InProcessDispatcher: embedded mode (no broker), engines loaded in the API process.

``submit`` hands the request straight to the batching scheduler of an engine loaded here, via
the same ``workers.runner.submit_generation`` a Celery worker runs. Importing this module
loads neither celery nor redis (tests/test_boundaries.py checks it).
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

from .host import EngineHost
from .runner import submit_generation

__all__ = ["InProcessDispatcher"]


class InProcessDispatcher:
    mode = "embedded"

    def __init__(self, host: EngineHost) -> None:
        self.host = host

    def submit(self, engine: str, request_id: str, payload: dict[str, Any], timeout: float) -> Future:
        deadline = time.time() + timeout
        return submit_generation(self.host, engine, {**payload, "request_id": request_id}, deadline)

    def queue_depths(self) -> dict[str, int]:
        return {name: self.host.queue_depth(name) for name in self.host.specs}

    def health(self) -> str:
        return "ok"

    def engine_states(self) -> dict[str, str]:
        return self.host.states()

    def problems(self) -> dict[str, str]:
        return self.host.problems()

    def start_loading(self) -> None:
        self.host.start_loading()

    def close(self) -> None:
        self.host.close()
