"""Test helpers shared by the tests and the benchmarks: a real ``abtest serve`` in a child process.

``running_server`` starts the API under gunicorn on a free local port with a freshly
bootstrapped admin key and stops it afterwards; :func:`free_port` and :func:`wait_healthy` are
its parts, for callers that manage the process themselves (e.g. to ``kill -9`` it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx

__all__ = ["running_server", "free_port", "wait_healthy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(
    port: int = 0, env: dict[str, str] | None = None, workers: int = 1, threads: int | None = None
) -> Iterator[tuple[str, str]]:
    """Run ``abtest serve`` in a child process; yield (base_url, admin_key). ``threads``
    defaults to the server's own (room for every engine's in-flight limit)."""
    port = port or free_port()
    admin_key = "abt_demo_" + secrets.token_urlsafe(24)
    child_env = {**os.environ, **(env or {}), "ABTEST_BOOTSTRAP_ADMIN_KEY": admin_key}
    proc = subprocess.Popen(
        [sys.executable, "-m", "abtest", "serve", "--port", str(port), "--workers", str(workers),
         *(["--threads", str(threads)] if threads else [])],
        env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    drain = threading.Thread(target=_keep_tail, args=(proc,), daemon=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url, proc)
        drain.start()  # keep reading stderr so the server never blocks on a full pipe
        yield base_url, admin_key
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _keep_tail(proc: subprocess.Popen) -> None:
    if proc.stderr is not None:
        for _ in proc.stderr:
            pass


def wait_healthy(base_url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"the API server exited with {proc.returncode}:\n{err[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the API server did not become healthy within {timeout:.0f}s")
