"""The SDK refuses, before any request, what the server would refuse in any string or number.

NUL characters and lone surrogates (anywhere, keys included), over-long ids and names, and
non-finite numbers raise ValueError naming the argument in ``assign``, ``infer`` and
``track``, sync and async; a bad event never enters the buffer, where it would be retried.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from abtest.client import AsyncClient, Client

from sdk_fakes import API_KEY, BASE_URL, FakeEventServer

NUL, LONE = "\x00", "\ud800"

ASSIGN_OK = {"experiment": "exp", "variant": "treatment", "engine": "v2", "in_experiment": True, "reason": None}
INFER_OK = {"request_id": "req-1", "experiment": "exp", "variant": "control", "engine": "v1", "text": "hi",
            "prompt_tokens": 3, "completion_tokens": 1, "latency_ms": 12.5, "ttft_ms": 4.0, "queue_ms": 0.5,
            "batch_size": 1}


class Recorder:
    """A transport handler that records every request and answers like the server would."""

    def __init__(self) -> None:
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        body = ASSIGN_OK if request.url.path == "/v1/assign" else INFER_OK
        return httpx.Response(200, json=body)


def deeply_nested(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


cyclic: dict[str, Any] = {}
cyclic["self"] = cyclic

# (args, kwargs, the start of the message: it names the argument and the place)
BAD_ASSIGNS = [
    (("exp", f"user{NUL}"), {}, "unit_id must not contain NUL"),
    (("exp", f"user{LONE}"), {}, "unit_id must not contain NUL"),
    (("exp", "u" * 201), {}, "unit_id must be at most 200 characters"),
    (("exp", ""), {}, "unit_id must be a non-empty string"),
    (("exp", 42), {}, "unit_id must be a non-empty string"),
    ((f"exp{NUL}", "u"), {}, "experiment must not contain NUL"),
    (("x" * 101, "u"), {}, "experiment must be at most 100 characters"),
    (("exp", "u", {"country": f"U{NUL}S"}), {}, "attributes['country'] must not contain NUL"),
    (("exp", "u", {f"co{LONE}": "US"}), {}, "attributes keys must not contain NUL"),
    (("exp", "u", {"tags": ["ok", LONE]}), {}, "attributes['tags'][1] must not contain NUL"),
    (("exp", "u", {"score": float("nan")}), {}, "attributes['score'] must be a finite number"),
    (("exp", "u", {"score": float("-inf")}), {}, "attributes['score'] must be a finite number"),
    (("exp", "u", {"deep": deeply_nested(31)}), {}, "attributes['deep']"),  # body > attributes > 31 = 33
    (("exp", "u", cyclic), {}, "attributes['self']"),  # fails, does not loop
]
BAD_INFERS = [
    (("exp", f"u{NUL}", "p"), {}, "unit_id must not contain NUL"),
    (("exp", "u" * 201, "p"), {}, "unit_id must be at most 200 characters"),
    (("exp", "u", f"def f():{NUL}"), {}, "prompt must not contain NUL"),
    (("exp", "u", f"def f():{LONE}"), {}, "prompt must not contain NUL"),
    (("exp", "u", "p"), {"stop": ["\n", f"{NUL}never"]}, "stop[1] must not contain NUL"),
    (("exp", "u", "p"), {"temperature": float("nan")}, "temperature must be a finite number"),
    (("exp", "u", "p"), {"top_p": float("inf")}, "top_p must be a finite number"),
    (("exp", "u", "p"), {"attributes": {"plan": LONE}}, "attributes['plan'] must not contain NUL"),
]
BAD_TRACKS = [
    ((f"user{NUL}", "buy"), {}, "unit_id must not contain NUL"),
    ((f"user{LONE}", "buy"), {}, "unit_id must not contain NUL"),
    (("u", f"buy{NUL}"), {}, "name must not contain NUL"),
    (("u", f"caf{LONE}"), {}, "name must not contain NUL"),
    (("u" * 201, "buy"), {}, "unit_id must be at most 200 characters"),
    (("u", "n" * 101), {}, "name must be at most 100 characters"),
    (("u", "buy"), {"request_id": f"r{NUL}"}, "request_id must not contain NUL"),
    (("u", "buy"), {"experiment": f"exp{LONE}"}, "experiment must not contain NUL"),
    (("u", "buy", float("inf")), {}, "value must be a finite number"),
    (("u", "buy", float("nan")), {}, "value must be a finite number"),
]


def ids(cases: list[Any]) -> list[str]:
    return [message.split(" must")[0] + f"-{i}" for i, (_, _, message) in enumerate(cases)]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(recorder: Recorder) -> Any:
    c = Client(BASE_URL, API_KEY, transport=httpx.MockTransport(recorder), flush_interval=60.0)
    yield c
    c.close(timeout=2.0)


@pytest.mark.parametrize(("args", "kwargs", "message"), BAD_ASSIGNS, ids=ids(BAD_ASSIGNS))
def test_assign_raises_before_any_request(client, recorder, args, kwargs, message) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        client.assign(*args, **kwargs)
    assert recorder.seen == []


@pytest.mark.parametrize(("args", "kwargs", "message"), BAD_INFERS, ids=ids(BAD_INFERS))
def test_infer_raises_before_any_request(client, recorder, args, kwargs, message) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        client.infer(*args, **kwargs)
    assert recorder.seen == []


@pytest.mark.parametrize(("args", "kwargs", "message"), BAD_TRACKS, ids=ids(BAD_TRACKS))
def test_track_raises_and_nothing_enters_the_buffer(make_client, server: FakeEventServer, args, kwargs,
                                                    message) -> None:
    client = make_client()
    with pytest.raises(ValueError, match="^" + message):
        client.track(*args, **kwargs)
    assert client.flush(timeout=5)
    assert client.stats.tracked == 0 and client.stats.pending == 0
    assert server.batches == []  # nothing was ever sent


def test_good_unicode_is_sent_unchanged(client, recorder, make_client, server: FakeEventServer) -> None:
    unit = "usér-✓-😀"
    client.assign("exp", unit, {"city": "Zürich", "n": 1.5, "tags": ["a", "b"]})
    client.infer("exp", unit, "def f():", stop=["\n\n"], temperature=0.5)
    assert [json.loads(r.content)["unit_id"] for r in recorder.seen] == [unit, unit]
    assert json.loads(recorder.seen[0].content)["attributes"] == {"city": "Zürich", "n": 1.5, "tags": ["a", "b"]}
    events = make_client()
    eid = events.track(unit, "köp", experiment="实验")
    assert events.flush(timeout=5)
    assert server.store[eid]["unit_id"] == unit and server.store[eid]["name"] == "köp"


def test_async_client_checks_the_same(recorder: Recorder) -> None:
    async def main() -> list[str]:
        errors = []
        async with AsyncClient(BASE_URL, API_KEY, transport=httpx.MockTransport(recorder),
                               flush_interval=60.0) as client:
            for call in (
                lambda: client.assign("exp", f"user{NUL}"),
                lambda: client.assign("exp", "u", {"score": float("nan")}),
                lambda: client.infer("exp", "u", f"p{LONE}"),
                lambda: client.infer("exp", "u", "p", stop=[NUL]),
                lambda: client.track("u" * 201, "buy"),
                lambda: client.track("u", f"buy{LONE}"),
                lambda: client.track("u", "buy", float("inf")),
            ):
                with pytest.raises(ValueError) as info:
                    await call()
                errors.append(str(info.value).split(" must")[0])
            assert client.stats.tracked == 0
            assert await client.flush(timeout=5)
            assert (await client.assign("exp", "usér-😀")).variant == "treatment"  # good text still goes
        return errors

    assert asyncio.run(main()) == ["unit_id", "attributes['score']", "prompt", "stop[0]", "unit_id", "name",
                                   "value"]
    assert [r.url.path for r in recorder.seen] == ["/v1/assign"]  # only the good call reached the server
