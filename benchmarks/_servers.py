"""Private PostgreSQL and Redis servers on 127.0.0.1 that a fault test may stop, hang and resume.

The fault tests and ``python -m benchmarks.faults`` need a database and a broker they can break
without breaking anyone else's: each class here starts its own server from the machine's
binaries (PostgreSQL's ``initdb``/``postgres`` as the ``postgres`` user when run as root,
``redis-server``) in a temporary directory, on a free loopback port. ``stop()`` ends it,
``start()`` brings it back on the same port and data, ``pause()``/``resume()`` send SIGSTOP and
SIGCONT to every process of the server (a hung server: connections are accepted by the kernel
and never answered).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

__all__ = ["PrivatePostgres", "PrivateRedis", "free_port", "available"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def available() -> dict[str, bool]:
    return {"postgres": _pg_bin("initdb") is not None, "redis": shutil.which("redis-server") is not None}


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"no server came up on 127.0.0.1:{port} within {timeout:.0f}s")


def _children(pid: int) -> list[int]:
    """``pid`` and its descendants (PostgreSQL forks a process per connection)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


class _Server:
    proc: subprocess.Popen | None = None
    stop_signal = signal.SIGTERM

    def pause(self) -> None:
        assert self.proc is not None
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        for pid in _children(self.proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:  # a connection's process that just ended
                continue

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


class PrivatePostgres(_Server):
    stop_signal = signal.SIGINT  # fast shutdown: ends every connection

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="abtest-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres")
        self._run([_pg_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync"],
                  check=True)

    def _user(self) -> dict:
        return {"user": "postgres", "group": "postgres"} if self._as_postgres else {}

    def _run(self, argv: list, **kw):  # type: ignore[no-untyped-def]
        return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **self._user(), **kw)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> "PrivatePostgres":
        argv = [_pg_bin("postgres"), "-D", self.data, "-p", str(self.port), "-h", "127.0.0.1",
                "-k", self.root, "-c", "fsync=off", "-c", "max_connections=200"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self._user())
        _wait_port(self.port, 30)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._run([_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"]).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("the private PostgreSQL did not become ready")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis(_Server):
    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="abtest-redis-")
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", self.root], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, 15)
        return self

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
