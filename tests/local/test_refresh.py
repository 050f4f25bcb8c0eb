"""A definitions change reaches a running local client: by polling, within one refresh after
the change; by push, at once (no poll is due). Against a real ``abtest serve``."""

from __future__ import annotations

import time
from typing import Any, Callable

import httpx
import pytest

from abtest.client import Client
from abtest.testing import running_server
from tests.conftest import experiment_payload


def _requests(client: Client) -> int:
    s = client.definitions
    assert s is not None
    return s.fetched + s.not_modified + s.rejected + s.refresh_failures


def _wait(predicate: Callable[[], bool], limit: float = 60.0) -> None:
    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > end:
            pytest.fail("the client did not get there")  # a hang guard, not a timing assertion
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_registry: str) -> Any:
    db = tmp_path_factory.mktemp("refresh") / "server.sqlite"
    env = {"ABTEST_DATABASE_URL": f"sqlite:///{db}", "ABTEST_ENGINE_REGISTRY": tiny_registry,
           "ABTEST_DEFINITIONS_PUSH_CHECK_S": "0.05", "ABTEST_PRELOAD_ENGINES": "false"}
    with running_server(env=env) as (base_url, admin_key):
        yield base_url, {"Authorization": f"Bearer {admin_key}"}, admin_key  # admin keys may do sdk calls


def _start(base_url: str, admin: dict[str, str], key: str) -> None:
    payload = experiment_payload(key, variants=[
        {"key": "control", "engine": "v1-fp32", "weight": 1.0, "control": True},
        {"key": "treatment", "engine": "v2-int4", "weight": 0.0}])
    httpx.post(f"{base_url}/v1/experiments", json=payload, headers=admin).raise_for_status()
    httpx.post(f"{base_url}/v1/experiments/{key}/start", headers=admin).raise_for_status()


def _ramp(base_url: str, admin: dict[str, str], key: str) -> None:
    variants = [{"key": "control", "engine": "v1-fp32", "weight": 0.0, "control": True},
                {"key": "treatment", "engine": "v2-int4", "weight": 1.0}]
    httpx.patch(f"{base_url}/v1/experiments/{key}", json={"variants": variants}, headers=admin).raise_for_status()


def test_a_change_reaches_a_polling_client_within_one_refresh(server: Any) -> None:
    base_url, admin, sdk_key = server
    _start(base_url, admin, "poll")
    with Client(base_url, sdk_key, evaluation="local", refresh_interval=0.2) as client:
        assert client.assign("poll", "u1").variant == "control"
        _ramp(base_url, admin, "poll")
        changed_at, before = time.monotonic(), _requests(client)
        # the refresh in flight at the change may predate it; the next one starts after it
        _wait(lambda: _requests(client) >= before + 2)
        assert client.assign("poll", "u1").variant == "treatment"
        print(f"polling: seen {time.monotonic() - changed_at:.3f}s after the change (interval 0.2s)")


def test_a_change_reaches_a_pushed_client_without_a_poll(server: Any) -> None:
    base_url, admin, sdk_key = server
    _start(base_url, admin, "push")
    with Client(base_url, sdk_key, evaluation="local", refresh_interval=3600, push=True) as client:
        assert client.assign("push", "u1").variant == "control"
        local = client._local
        assert local is not None and local.push is not None
        _wait(local.push.connected.is_set)
        version = client.definitions.version  # type: ignore[union-attr]
        changed_at = time.monotonic()
        _ramp(base_url, admin, "push")
        _wait(lambda: client.definitions.version != version)  # type: ignore[union-attr]
        assert client.assign("push", "u1").variant == "treatment"
        status = client.definitions
        assert status is not None and status.fetched == 2  # the first load, then the pushed change
        print(f"push: seen {time.monotonic() - changed_at:.3f}s after the change (no poll due for an hour)")


def test_an_async_client_gets_pushed_changes_too(server: Any) -> None:
    import asyncio

    from abtest.client import AsyncClient

    base_url, admin, sdk_key = server
    _start(base_url, admin, "push-async")

    async def run() -> tuple[str | None, str | None, int]:
        async with AsyncClient(base_url, sdk_key, evaluation="local", refresh_interval=3600, push=True) as client:
            before = (await client.assign("push-async", "u1")).variant
            version = client.definitions.version  # type: ignore[union-attr]
            await asyncio.sleep(0.5)  # lets the stream connect (the change is pushed either way once it has)
            await asyncio.to_thread(_ramp, base_url, admin, "push-async")
            end = asyncio.get_running_loop().time() + 60  # a hang guard, not a timing assertion
            while client.definitions.version == version:  # type: ignore[union-attr]
                assert asyncio.get_running_loop().time() < end, "the change never arrived"
                await asyncio.sleep(0.02)
            after = (await client.assign("push-async", "u1")).variant
            return before, after, client.definitions.fetched  # type: ignore[union-attr]

    before, after, fetched = asyncio.run(run())
    assert (before, after, fetched) == ("control", "treatment", 2)
