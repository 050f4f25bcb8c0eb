"""AsyncClient: same request shapes, retry rules and event guarantees as Client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

import abtest.client as sdk
from abtest.client import AssignResult, AsyncClient

from sdk_fakes import API_KEY, BASE_URL, FakeEventServer


class AsyncSleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def make(handler: Any, **options: Any) -> tuple[AsyncClient, AsyncSleeps]:
    sleeps = AsyncSleeps()
    options.setdefault("sleep", sleeps)
    options.setdefault("flush_interval", 60.0)
    return AsyncClient(BASE_URL, API_KEY, transport=httpx.MockTransport(handler), **options), sleeps


def test_async_assign_retries_503_with_retry_after_then_succeeds() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(503, headers={"Retry-After": "4"}, json={"error": {"code": "busy", "message": "m", "details": None}})
        return httpx.Response(200, json={"experiment": "e", "variant": "a", "engine": "v1", "in_experiment": True, "reason": None})

    async def main() -> tuple[AssignResult, AsyncSleeps]:
        client, sleeps = make(handler)
        async with client:
            return await client.assign("e", "u", {"x": 1}), sleeps

    result, sleeps = asyncio.run(main())
    assert result.variant == "a" and sleeps.delays == [4.0]
    assert seen[1].headers["Authorization"] == f"Bearer {API_KEY}"
    assert json.loads(seen[1].content) == {"experiment": "e", "unit_id": "u", "attributes": {"x": 1}}


def test_async_infer_error_carries_request_id() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(504, json={"error": {"code": "timeout", "message": "slow", "details": None}, "request_id": "r-5"})

    async def main() -> None:
        client, _ = make(handler)
        async with client:
            await client.infer("e", "u", "p", max_new_tokens=4)

    with pytest.raises(sdk.GatewayTimeoutError) as info:
        asyncio.run(main())
    assert info.value.request_id == "r-5"


def test_async_track_resends_same_ids_and_aclose_delivers_all() -> None:
    server = FakeEventServer()
    server.script.extend(["store+503", "connect", "429:1.5"])

    async def main() -> tuple[list[str], sdk.ClientStats, AsyncSleeps]:
        client, sleeps = make(server.handler, batch_size=40)
        ids = [await client.track(f"u{i}", "purchase", 2.0) for i in range(100)]
        stats = await client.aclose()
        return ids, stats, sleeps

    ids, stats, sleeps = asyncio.run(main())
    assert sorted(server.store) == sorted(ids)
    assert stats.tracked == stats.sent + stats.duplicates == 100
    assert (stats.duplicates, stats.retries, stats.dropped, stats.pending) == (40, 3, 0, 0)
    assert sleeps.delays[2] == 1.5


def test_async_flush_and_buffer_full_raise() -> None:
    server = FakeEventServer()

    async def main() -> None:
        client, _ = make(server.handler, batch_size=3, max_buffer=3, on_full="raise")
        for _ in range(3):
            await client.track("u", "view")
        with pytest.raises(sdk.BufferFullError):
            await client.track("u", "view")  # sender task has not run yet: buffer still full
        assert await client.flush(timeout=5)
        assert client.stats.sent == 3
        await client.aclose()
        with pytest.raises(sdk.ClientClosedError):
            await client.track("u", "view")

    asyncio.run(main())


def test_async_close_deadline_counts_dropped() -> None:
    server = FakeEventServer()
    server.script.extend(["503"] * 10_000)

    async def main() -> sdk.ClientStats:
        client = AsyncClient(BASE_URL, API_KEY, transport=httpx.MockTransport(server.handler),
                             backoff_base=0.01, backoff_max=0.05)
        for _ in range(7):
            await client.track("u", "view")
        return await asyncio.wait_for(client.aclose(timeout=0.2), 5)

    stats = asyncio.run(main())
    assert (stats.tracked, stats.dropped, stats.pending, stats.sent) == (7, 7, 0, 0)
    assert stats.retries > 0


def test_async_block_policy_waits_then_drops_oldest() -> None:
    server = FakeEventServer()

    async def main() -> tuple[float, sdk.ClientStats, list[str]]:
        gate = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            await gate.wait()  # holds the sender inside its request
            return server.handler(request)

        client, _ = make(handler, batch_size=2, max_buffer=2, on_full="block", block_timeout=0.05)
        ids = [await client.track("u", "view") for _ in range(2)]
        await asyncio.sleep(0.02)  # the sender takes both and stalls on the gate
        ids += [await client.track("u", "view") for _ in range(2)]  # buffer full again
        loop = asyncio.get_running_loop()
        started = loop.time()
        ids.append(await client.track("u", "view"))
        waited = loop.time() - started
        gate.set()
        return waited, await client.aclose(), ids

    waited, stats, ids = asyncio.run(main())
    assert waited >= 0.04
    assert (stats.tracked, stats.sent, stats.dropped, stats.pending) == (5, 4, 1, 0)
    assert ids[2] not in server.store and set(ids) - {ids[2]} == set(server.store)
