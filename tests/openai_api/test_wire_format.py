"""The stream on the wire, read byte by byte with a plain HTTP client, and a client that hangs
up mid-stream (its row says ``cancelled``), against a live server in both modes."""

from __future__ import annotations

import json

import httpx

from .conftest import EXPERIMENT

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]


def headers(live, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {live.sdk_key}", **extra}


def test_sse_bytes(live) -> None:
    body = {"model": EXPERIMENT, "messages": MESSAGES, "user": "wire", "max_tokens": 10, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{live.v1}/chat/completions", json=body, headers=headers(live), timeout=60) as r:
        assert r.status_code == 200
        raw = b"".join(r.iter_raw())
        got = r.headers
    assert got["content-type"] == "text/event-stream; charset=utf-8" and got["cache-control"] == "no-cache"
    assert raw.endswith(b"data: [DONE]\n\n") and raw.count(b"[DONE]") == 1
    frames = raw.split(b"\n\n")
    assert frames[-1] == b""  # every event ends with a blank line
    frames = frames[:-1]
    for frame in frames:  # one line per event, each a data: line
        assert frame.startswith(b"data: ") and b"\n" not in frame and b"\r" not in frame
    events = [json.loads(f[len(b"data: "):]) for f in frames[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == f"chatcmpl-{got['x-abtest-request-id']}"
               for e in events)
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert finishes[:-1] == [None] * (len(finishes) - 1) and finishes[-1] in ("stop", "length")
    assert events[-1]["choices"] == [] and set(events[-1]["usage"]) == {"prompt_tokens", "completion_tokens",
                                                                          "total_tokens"}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    plain = httpx.post(f"{live.v1}/chat/completions", json={**body, "stream": False, "stream_options": None},
                       headers=headers(live), timeout=60).json()
    assert text == plain["choices"][0]["message"]["content"]
    row = live.row(got["x-abtest-request-id"])
    assert row.status == "ok" and row.completion_tokens == events[-1]["usage"]["completion_tokens"]
    assert row.ttft_ms is not None and row.ttft_ms <= row.latency_ms


def test_client_disconnect_cancels_the_request(live) -> None:
    body = {"model": EXPERIMENT, "messages": MESSAGES, "user": "leaver", "max_tokens": 480, "temperature": 1.0,
            "seed": 3, "stream": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{live.v1}/chat/completions", json=body, headers=headers(live)) as r:
            assert r.status_code == 200
            rid = r.headers["x-abtest-request-id"]
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen == 3:
                    break  # hang up after the first pieces of text
    row = live.row(rid, timeout=60)  # written when the server notices, at its next write
    assert row is not None and row.status == "cancelled" and row.error_code == "client_disconnected"
    assert row.in_experiment and row.variant in ("control", "treatment")
    if live.redis_url is not None:  # Celery: the worker heard the cancel and stopped waiting on the engine
        import time

        import redis

        broker, deadline, meta = redis.Redis.from_url(live.redis_url), time.monotonic() + 30, {}
        while not meta and time.monotonic() < deadline:  # stored once the worker's task returns
            meta = json.loads(broker.get(f"celery-task-meta-{rid}") or "{}")
            time.sleep(0.05)
        assert meta.get("status") == "SUCCESS" and meta["result"]["error"]["code"] == "cancelled", meta
    # the server is still serving: the slot and the engine are free again
    after = httpx.post(f"{live.v1}/chat/completions", json={**body, "max_tokens": 3, "stream": False},
                       headers=headers(live), timeout=60)
    assert after.status_code == 200, after.text


def test_unknown_routes_answer_json(live) -> None:
    missing = httpx.get(f"{live.v1}/embeddings", headers=headers(live), timeout=10)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"
    assert missing.json()["error"]["type"] == "not_found_error" and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(f"{live.v1}/chat/completions", headers=headers(live), timeout=10)
    assert wrong.status_code == 405 and set(wrong.json()["error"]) == {"message", "type", "param", "code"}
