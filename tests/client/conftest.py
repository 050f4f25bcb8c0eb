"""Fixtures for the client SDK tests (doubles live in ``sdk_fakes``)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from abtest.client import Client

from sdk_fakes import API_KEY, BASE_URL, FakeEventServer, SleepRecorder


@pytest.fixture
def server() -> FakeEventServer:
    return FakeEventServer()


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
def make_client(server: FakeEventServer, sleeps: SleepRecorder):
    """Factory for clients wired to ``server``; all are closed after the test."""
    clients: list[Client] = []

    def factory(**options: Any) -> Client:
        options.setdefault("sleep", sleeps)
        options.setdefault("flush_interval", 60.0)
        client = Client(BASE_URL, API_KEY, transport=httpx.MockTransport(server.handler), **options)
        clients.append(client)
        return client

    yield factory
    server.gate.set()
    for client in clients:
        client.close(timeout=2.0)
