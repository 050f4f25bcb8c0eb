"""The official ``openai`` package against a live abtest server, embedded and Celery mode:
sync and async, plain and streamed, chat and completions, /v1/models, and its retry on 429.

Every answer is checked against the outcome log: the response's ``X-Abtest-Request-Id`` names
a row of the experiment with the variant and engine the headers name."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from abtest.evaluator import assign as pure_assign  # noqa: F401 - documents where variants come from

from .conftest import EXPERIMENT, openai

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
ENGINES = {"control": "v1-fp32", "treatment": "v2-int4"}


def client(live, **kw):  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=live.v1, api_key=live.sdk_key, **kw)


def check_row(live, raw_headers, *, unit: str, tokens: int | None = None):  # type: ignore[no-untyped-def]
    rid = raw_headers["x-abtest-request-id"]
    row = live.row(rid)
    assert row is not None, f"no outcome row for {rid}"
    assert row.status == "ok" and row.unit_id == unit and row.in_experiment
    assert row.variant == raw_headers["x-abtest-variant"] and row.engine == raw_headers["x-abtest-engine"]
    assert ENGINES[row.variant] == row.engine
    if tokens is not None:
        assert row.completion_tokens == tokens
    assert row.ttft_ms is not None and 0 < row.ttft_ms <= row.latency_ms
    return row


def test_sync_chat_plain(live) -> None:
    raw = client(live).chat.completions.with_raw_response.create(
        model=EXPERIMENT, messages=MESSAGES, user="alice", max_tokens=6, temperature=0)
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.model == EXPERIMENT
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens == 6 or choice.finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    check_row(live, raw.headers, unit="alice", tokens=completion.usage.completion_tokens)


def test_sync_chat_streamed_matches_plain(live) -> None:
    c = client(live)
    plain = c.chat.completions.create(model=EXPERIMENT, messages=MESSAGES, user="bob", max_tokens=12, temperature=0)
    with c.chat.completions.with_streaming_response.create(
            model=EXPERIMENT, messages=MESSAGES, user="bob", max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True}) as response:
        chunks = list(response.parse())
        headers = response.headers
    with_choices = [ch for ch in chunks if ch.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in with_choices)
    assert text == plain.choices[0].message.content  # greedy: the same completion, streamed
    finishes = [ch.choices[0].finish_reason for ch in with_choices if ch.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]  # once, on the last choice chunk
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert len({ch.id for ch in chunks}) == 1
    row = check_row(live, headers, unit="bob", tokens=plain.usage.completion_tokens)
    assert row.variant == c.chat.completions.with_raw_response.create(
        model=EXPERIMENT, messages=MESSAGES, user="bob", max_tokens=1).headers["x-abtest-variant"]  # sticky


def test_completions_plain_and_streamed(live) -> None:
    c = client(live)
    raw = c.completions.with_raw_response.create(model=EXPERIMENT, prompt="def fibonacci(n):", user="carol",
                                                 max_tokens=8, temperature=0)
    plain = raw.parse()
    assert plain.object == "text_completion" and plain.choices[0].finish_reason in ("stop", "length")
    check_row(live, raw.headers, unit="carol", tokens=plain.usage.completion_tokens)
    streamed = c.completions.create(model=EXPERIMENT, prompt="def fibonacci(n):", user="carol", max_tokens=8,
                                    temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == plain.choices[0].text


def test_unit_from_header(live) -> None:
    raw = client(live, default_headers={"X-Abtest-Unit": "dave"}).chat.completions.with_raw_response.create(
        model=EXPERIMENT, messages=MESSAGES, max_tokens=2)
    check_row(live, raw.headers, unit="dave")


def test_async_plain_and_streamed(live) -> None:
    async def run():  # type: ignore[no-untyped-def]
        async with openai.AsyncOpenAI(base_url=live.v1, api_key=live.sdk_key) as c:
            plain, stream = await asyncio.gather(
                c.chat.completions.create(model=EXPERIMENT, messages=MESSAGES, user="erin", max_tokens=10,
                                          temperature=0),
                c.chat.completions.create(model=EXPERIMENT, messages=MESSAGES, user="erin", max_tokens=10,
                                          temperature=0, stream=True))
            text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
            return plain, text

    plain, text = asyncio.run(run())
    assert text == plain.choices[0].message.content


def test_models_lists_experiments_and_engines_for_admin(live) -> None:
    sdk_ids = [m.id for m in client(live).models.list()]
    assert sdk_ids == [EXPERIMENT]  # an sdk key may call experiments only
    admin_ids = {m.id for m in openai.OpenAI(base_url=live.v1, api_key=live.admin_key).models.list()}
    assert {EXPERIMENT, "v1-fp32", "v2-int4"} <= admin_ids


def test_direct_engine_needs_admin(live) -> None:
    admin = openai.OpenAI(base_url=live.v1, api_key=live.admin_key)
    raw = admin.chat.completions.with_raw_response.create(model="v1-fp32", messages=MESSAGES, max_tokens=3)
    assert raw.headers["x-abtest-engine"] == "v1-fp32" and "x-abtest-variant" not in raw.headers
    row = live.row(raw.headers["x-abtest-request-id"])
    assert row.status == "ok" and row.experiment_id is None and not row.in_experiment
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(live, max_retries=0).chat.completions.create(model="v1-fp32", messages=MESSAGES, max_tokens=3)
    assert info.value.body["param"] == "model"


def test_errors_in_openai_shape(live) -> None:
    c = client(live, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="no-such-model", messages=MESSAGES, user="u")
    assert info.value.body["param"] == "model" and info.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=live.v1, api_key="abt_wrong", max_retries=0).models.list()


def test_sdk_retries_a_429_with_retry_after(live) -> None:
    """Failed authentications from one address are limited (429 + Retry-After, whatever key
    comes next); the SDK waits as told and retries, and its retry succeeds."""
    seen: list[int] = []
    bad = openai.OpenAI(base_url=live.v1, api_key="abt_wrong", max_retries=0)
    for _ in range(3):
        with pytest.raises(openai.APIStatusError):
            bad.models.list()
    http = httpx.Client(event_hooks={"response": [lambda r: seen.append(r.status_code)]})
    good = client(live, http_client=http, max_retries=3)
    raw = good.chat.completions.with_raw_response.create(model=EXPERIMENT, messages=MESSAGES, user="frank",
                                                         max_tokens=2)
    assert seen[0] == 429 and seen[-1] == 200 and set(seen) <= {429, 200}
    assert raw.retries_taken == len(seen) - 1 >= 1
    check_row(live, raw.headers, unit="frank")
