"""Real-server helpers for the event tests: a restartable server, a fault-injecting proxy, stored rows."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, select

from abtest.models import Event
from abtest.testing import running_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stored_ids(url: str, name: str) -> list[str]:
    """Every stored event_id of events called ``name`` (duplicates would appear twice)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(select(Event.event_id).where(Event.name == name)))
    finally:
        engine.dispose()


class LiveServer:
    """``abtest serve`` on a fixed port and database that a test can stop and start again.

    Each start bootstraps a new admin key; the first one stays valid (it is in the
    database), so clients made with :attr:`key` keep working across restarts.
    """

    def __init__(self, url: str, env: dict[str, str], workers: int) -> None:
        self.url, self.env, self.workers = url, env, workers
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.key = ""
        self._stack: contextlib.ExitStack | None = None

    def start(self) -> None:
        assert self._stack is None, "already running"
        stack = contextlib.ExitStack()
        try:
            _, key = stack.enter_context(running_server(port=self.port, env=self.env, workers=self.workers))
        except RuntimeError as exc:
            # create_app's bootstrap-key insert is check-then-insert, so two gunicorn workers
            # booting together can race and one dies on the unique key_hash ("Worker failed
            # to boot"). That is a start-up bug outside ingestion; one retry sidesteps it,
            # and any other boot failure fails the retry too.
            if "Worker failed to boot" not in str(exc):
                raise
            _, key = stack.enter_context(running_server(port=self.port, env=self.env, workers=self.workers))
        self.key = self.key or key
        self._stack = stack

    def stop(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()


class FaultProxy:
    """A TCP proxy in front of the API that can lose responses on purpose.

    While ``lose_responses`` is positive, the first bytes of each response coming back from
    the server are swallowed and both connections are closed: the server has stored the
    batch but the client never hears so, which is exactly when a retry must not double-count.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.lose_responses = 0
        self.lost = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _take_fault(self) -> bool:
        with self._lock:
            if self.lose_responses > 0:
                self.lose_responses -= 1
                self.lost += 1
                return True
            return False

    def _pipe(self, src: socket.socket, dst: socket.socket, is_response: bool) -> None:
        try:
            while data := src.recv(65536):
                if is_response and self._take_fault():
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[int], FaultProxy]]:
    """Factory: a :class:`FaultProxy` in front of a port; all are closed after the test."""
    proxies: list[FaultProxy] = []

    def make(upstream_port: int) -> FaultProxy:
        proxy = FaultProxy(upstream_port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
