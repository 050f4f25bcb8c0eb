"""Bad input on the OpenAI routes: a 400 in OpenAI's shape naming ``param``, and nothing logged,
except a prompt beyond the engine's context window, which is that engine's outcome (rejected)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from abtest.app import create_app
from abtest.models import Exposure, RequestLog
from abtest.services.keys import create_key
from tests.conftest import clear_tables, experiment_payload

pytest.importorskip("torch")

OK_MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def api(sqlite_url, tiny_registry):  # type: ignore[no-untyped-def]
    clear_tables(sqlite_url)
    app = create_app({"database_url": sqlite_url, "engine_registry": tiny_registry, "cache_ttl_s": 0.0,
                      "preload_engines": False, "infer_timeout_s": 60.0, "guardrail_interval_s": 0.0})
    services = app.extensions["abtest"]
    with services.db.transaction() as session:
        admin = {"Authorization": f"Bearer {create_key(session, 'a', 'admin')}"}
        sdk = {"Authorization": f"Bearer {create_key(session, 's', 'sdk')}"}
    client = app.test_client()
    assert client.post("/v1/experiments", json=experiment_payload("chat"), headers=admin).status_code == 201
    assert client.post("/v1/experiments/chat/start", headers=admin).status_code == 200
    yield client, sdk, services
    services.close()


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": OK_MESSAGES, "user": "u1", "max_tokens": 4, **fields}


BAD = [
    ("unknown model", chat(model="gpt-nothing"), "model", "model_not_found"),
    ("messages not a list", chat(messages="hello"), "messages", "invalid_value"),
    ("no messages", chat(messages=[]), "messages", "invalid_value"),
    ("message not an object", chat(messages=["hi"]), "messages[0]", "invalid_value"),
    ("message without content", chat(messages=[{"role": "user"}]), "messages[0].content", "invalid_value"),
    ("content of numbers", chat(messages=[{"role": "user", "content": 7}]), "messages[0].content", "invalid_value"),
    ("an image part", chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages[0].content[0].type", "invalid_value"),
    ("unknown role", chat(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role", "invalid_value"),
    ("unknown message field", chat(messages=[{"role": "user", "content": "hi", "mood": "x"}]),
     "messages[0].mood", "invalid_value"),
    ("negative max_tokens", chat(max_tokens=-5), "max_tokens", "invalid_value"),
    ("zero max_completion_tokens", chat(max_completion_tokens=0), "max_completion_tokens", "invalid_value"),
    ("temperature above 2", chat(temperature=2.5), "temperature", "invalid_value"),
    ("temperature below 0", chat(temperature=-0.1), "temperature", "invalid_value"),
    ("stream not a boolean", chat(stream="true"), "stream", "invalid_value"),
    ("stream_options without stream", chat(stream_options={"include_usage": True}), "stream_options",
     "invalid_value"),
    ("n above 1", chat(n=2), "n", "invalid_value"),
    ("unknown field", chat(frequency_penalty=0.5), "frequency_penalty", "invalid_value"),
    ("no unit for an experiment", {k: v for k, v in chat().items() if k != "user"}, "user", "invalid_value"),
    ("top_p zero", chat(top_p=0), "top_p", "invalid_value"),
    ("five stops", chat(stop=["a", "b", "c", "d", "e"]), "stop", "invalid_value"),
]


@pytest.mark.parametrize("body,param,code", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_chat_input_is_a_400_naming_param_and_logs_nothing(api, body, param, code) -> None:
    client, sdk, services = api
    for stream in (False, True):
        reply = client.post("/v1/chat/completions", json={**body, **({"stream": True} if stream and
                                                                         not {"stream", "stream_options"} & set(body) else {})}, headers=sdk)
        assert reply.status_code == 400, reply.get_json()
        error = reply.get_json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
        assert param.split(".")[0].split("[")[0] in error["message"]
    with services.db.session() as session:
        assert session.scalar(select(func.count()).select_from(RequestLog)) == 0
        assert session.scalar(select(func.count()).select_from(Exposure)) == 0


def test_bad_completion_input(api) -> None:
    client, sdk, _ = api
    for body, param in [({"model": "chat", "user": "u"}, "prompt"),
                        ({"model": "chat", "user": "u", "prompt": ["a", "b"]}, "prompt"),
                        ({"model": "chat", "user": "u", "prompt": "x", "messages": OK_MESSAGES}, "messages")]:
        reply = client.post("/v1/completions", json=body, headers=sdk)
        assert reply.status_code == 400 and reply.get_json()["error"]["param"] == param


def test_a_prompt_beyond_the_context_window_is_the_engines_outcome(api) -> None:
    client, sdk, services = api
    long = [{"role": "user", "content": "word " * 4000}]  # the tiny engines' window is 512 tokens
    for stream in (False, True):
        reply = client.post("/v1/chat/completions", json=chat(messages=long, stream=stream), headers=sdk)
        assert reply.status_code == 400
        error = reply.get_json()["error"]
        assert (error["param"], error["code"]) == ("messages", "context_length_exceeded")
        assert "context window" in error["message"]
        rid = reply.headers["X-Abtest-Request-Id"]
        with services.db.session() as session:
            row = session.get(RequestLog, rid)
        assert row is not None and (row.status, row.error_code) == ("rejected", "prompt_too_long")


def test_not_json_and_auth_errors_are_openai_shaped(api) -> None:
    client, sdk, _ = api
    reply = client.post("/v1/chat/completions", data="{", headers={**sdk, "Content-Type": "application/json"})
    assert reply.status_code == 400 and reply.get_json()["error"]["type"] == "invalid_request_error"
    reply = client.post("/v1/chat/completions", json=chat())
    assert reply.status_code == 401 and reply.get_json()["error"]["type"] == "authentication_error"
    reply = client.get("/v1/experiments/nope/nothing/here", headers=sdk)
    assert reply.status_code == 404 and reply.get_json()["error"]["code"] == "not_found"
