"""Helpers for serving tests: worker processes, concurrent calls, outcome rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import select

from abtest.models import RequestLog


class WorkerProcess:
    """``abtest worker --engine NAME`` as a real child process."""

    def __init__(self, engine: str, env: dict[str, str], log_path: str, concurrency: int = 16) -> None:
        self.engine, self.env, self.log_path, self.concurrency = engine, env, log_path, concurrency
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "abtest", "worker", "--engine", self.engine,
             "--concurrency", str(self.concurrency), "--loglevel", "INFO"],
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            if " ready." in self.tail():
                return
            time.sleep(0.2)
        raise AssertionError(f"worker {self.engine} not ready:\n{self.tail()}")

    def tail(self) -> str:
        return self.tail_all()[-4000:]

    def tail_all(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def infer_many(app: Any, headers: dict[str, str], calls: Iterable[dict[str, Any]], concurrency: int = 16) -> list[tuple[int, dict]]:
    def one(body: dict[str, Any]) -> tuple[int, dict]:
        reply = app.test_client().post("/v1/infer", json=body, headers=headers)
        return reply.status_code, reply.get_json()

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, calls))


def outcome_rows(services: Any) -> list[RequestLog]:
    with services.db.session() as session:
        return list(session.scalars(select(RequestLog)))
