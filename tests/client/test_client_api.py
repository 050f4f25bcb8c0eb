"""assign/infer/report: request shapes, error mapping and the safe-retry policy."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import httpx
import pytest

import abtest.client as sdk
from abtest.client import AssignResult, Client, InferResult
from abtest.client._http import Backoff, parse_retry_after

from sdk_fakes import API_KEY, BASE_URL, SleepRecorder

ASSIGN_OK = {"experiment": "exp", "variant": "treatment", "engine": "v2_int4", "in_experiment": True, "reason": None}
INFER_OK = {
    "request_id": "req-1", "experiment": "exp", "variant": "control", "engine": "v1_fp32",
    "text": "hi", "prompt_tokens": 3, "completion_tokens": 1, "latency_ms": 12.5,
    "ttft_ms": 4.0, "queue_ms": 0.5, "batch_size": 2,
}


def scripted(responses: list[Any], seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    """Handler answering with ``responses`` in order (exceptions are raised)."""
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return handler


def client_for(responses: list[Any], **options: Any) -> tuple[Client, list[httpx.Request], SleepRecorder]:
    seen: list[httpx.Request] = []
    sleeps = SleepRecorder()
    options.setdefault("sleep", sleeps)
    client = Client(BASE_URL, API_KEY, transport=httpx.MockTransport(scripted(responses, seen)), **options)
    return client, seen, sleeps


def error(status: int, code: str = "boom", headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    body = {"error": {"code": code, "message": f"{code} happened", "details": {"k": 1}}, **extra}
    return httpx.Response(status, json=body, headers=headers)


def test_assign_request_shape_auth_and_typed_result() -> None:
    client, seen, _ = client_for([httpx.Response(200, json=ASSIGN_OK)])
    result = client.assign("exp", "user-1", {"country": "FR"})
    assert result == AssignResult("exp", "treatment", "v2_int4", True, None)
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == f"{BASE_URL}/v1/assign"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert json.loads(request.content) == {"experiment": "exp", "unit_id": "user-1", "attributes": {"country": "FR"}}
    client.close()


def test_infer_sends_only_given_params_and_returns_typed_result() -> None:
    client, seen, _ = client_for([httpx.Response(200, json=INFER_OK)] * 2)
    result = client.infer("exp", "u", "Hello")
    assert isinstance(result, InferResult)
    assert (result.request_id, result.text, result.completion_tokens, result.batch_size) == ("req-1", "hi", 1, 2)
    assert result.raw == INFER_OK
    assert json.loads(seen[0].content) == {"experiment": "exp", "unit_id": "u", "prompt": "Hello"}
    client.infer("exp", "u", "Hello", max_new_tokens=8, temperature=0.0, top_p=0.9, seed=7, stop=["\n"],
                 attributes={"plan": "pro"})
    assert json.loads(seen[1].content) == {
        "experiment": "exp", "unit_id": "u", "prompt": "Hello", "attributes": {"plan": "pro"},
        "max_new_tokens": 8, "temperature": 0.0, "top_p": 0.9, "seed": 7, "stop": ["\n"],
    }
    client.close()


def test_report_and_health_paths() -> None:
    client, seen, _ = client_for([httpx.Response(200, json={"experiment": "a/b"}), httpx.Response(200, json={"status": "ok"})])
    assert client.report("a/b") == {"experiment": "a/b"}
    assert client.health() == {"status": "ok"}
    assert seen[0].method == "GET" and seen[0].url.raw_path == b"/v1/experiments/a%2Fb/report"
    assert seen[1].url.path == "/healthz"
    client.close()


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, sdk.BadRequestError), (401, sdk.AuthenticationError), (403, sdk.PermissionDeniedError),
     (404, sdk.NotFoundError), (409, sdk.ClientError), (422, sdk.BadRequestError), (500, sdk.ServerError)],
)
def test_json_error_body_maps_to_typed_exception(status: int, cls: type) -> None:
    client, seen, _ = client_for([error(status, code="nope")])
    with pytest.raises(cls) as info:
        client.assign("exp", "u")
    err = info.value
    assert type(err) is cls and isinstance(err, sdk.APIError) and isinstance(err, sdk.ABTestError)
    assert (err.status, err.code, err.message, err.details) == (status, "nope", "nope happened", {"k": 1})
    assert len(seen) == 1  # none of these is retried
    client.close()


def test_non_json_error_body_keeps_status_and_text() -> None:
    client, _, _ = client_for([httpx.Response(500, text="<html>Internal Server Error</html>")])
    with pytest.raises(sdk.ServerError) as info:
        client.assign("exp", "u")
    assert info.value.code == "http_500"
    assert "Internal Server Error" in info.value.message


@pytest.mark.parametrize(("status", "cls"), [(502, sdk.EngineError), (504, sdk.GatewayTimeoutError)])
def test_infer_engine_errors_carry_request_id(status: int, cls: type) -> None:
    client, seen, _ = client_for([error(status, code="engine", request_id="req-9")])
    with pytest.raises(cls) as info:
        client.infer("exp", "u", "p")
    assert info.value.request_id == "req-9"
    assert "req-9" in str(info.value)
    assert len(seen) == 1  # the engine may have run: not retried


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", json.dumps({"experiment": "exp"}).encode()])
def test_success_with_bad_body_is_invalid_response(body: bytes) -> None:
    client, _, _ = client_for([httpx.Response(200, content=body)])
    with pytest.raises(sdk.InvalidResponseError):
        client.assign("exp", "u")


def test_503_then_429_then_success_is_retried_with_backoff() -> None:
    client, seen, sleeps = client_for(
        [error(503), error(429, headers={"Retry-After": "7"}), httpx.Response(200, json=INFER_OK)],
        rng=random.Random(1), backoff_base=0.5,
    )
    assert client.infer("exp", "u", "p").request_id == "req-1"
    assert len(seen) == 3
    assert 0.0 <= sleeps.delays[0] <= 0.5  # full jitter, first ceiling = base
    assert sleeps.delays[1] == 7.0  # Retry-After obeyed exactly
    assert client.stats.api_retries == 2


def test_retry_after_http_date_and_clamp() -> None:
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 28.0 <= parse_retry_after(when) <= 30.0
    assert parse_retry_after("garbage") is None and parse_retry_after("-5") == 0.0
    client, _, sleeps = client_for(
        [error(503, headers={"Retry-After": "3600"}), httpx.Response(200, json=ASSIGN_OK)], max_retry_after=20.0
    )
    client.assign("exp", "u")
    assert sleeps.delays == [20.0]


def test_connection_error_before_send_is_retried() -> None:
    request = httpx.Request("POST", BASE_URL)
    client, seen, sleeps = client_for(
        [httpx.ConnectError("refused", request=request), httpx.ConnectTimeout("slow", request=request),
         httpx.Response(200, json=ASSIGN_OK)]
    )
    assert client.assign("exp", "u").variant == "treatment"
    assert len(seen) == 3 and len(sleeps.delays) == 2


@pytest.mark.parametrize(
    ("exc", "cls"),
    [(httpx.ReadTimeout("t"), sdk.TimeoutError), (httpx.RemoteProtocolError("reset"), sdk.TransportError)],
)
def test_failure_after_send_is_not_retried(exc: Exception, cls: type) -> None:
    client, seen, _ = client_for([exc])
    with pytest.raises(cls) as info:
        client.infer("exp", "u", "p")
    assert info.value.__cause__ is exc
    assert len(seen) == 1


def test_retries_exhausted_raise_last_error() -> None:
    client, seen, sleeps = client_for([error(503)] * 3, max_retries=2)
    with pytest.raises(sdk.ServiceUnavailableError):
        client.assign("exp", "u")
    assert len(seen) == 3 and len(sleeps.delays) == 2
    client, seen, _ = client_for([httpx.ConnectError("refused")], max_retries=0)
    with pytest.raises(sdk.TransportError):
        client.assign("exp", "u")


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    backoff = Backoff(base=0.1, cap=1.0, rng=random.Random(3))
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (40, 1.0)]:
        draws = [backoff.delay(attempt) for _ in range(400)]
        assert min(draws) >= 0.0 and max(draws) <= ceiling
        assert max(draws) > 0.9 * ceiling and min(draws) < 0.1 * ceiling  # spread over the whole range


def test_closed_client_refuses_calls_and_close_is_idempotent() -> None:
    client, _, _ = client_for([])
    with client:
        pass
    assert client.close().tracked == 0
    with pytest.raises(sdk.ClientClosedError):
        client.assign("exp", "u")
    with pytest.raises(sdk.ClientClosedError):
        client.track("u", "purchase")


def test_invalid_options_are_refused() -> None:
    for options in ({"batch_size": 1001}, {"batch_size": 0}, {"on_full": "spill"}, {"max_buffer": 10, "batch_size": 20},
                    {"flush_interval": 0}, {"max_retries": -1}):
        with pytest.raises(ValueError):
            Client(BASE_URL, API_KEY, **options)


def test_import_pulls_no_server_dependencies() -> None:
    code = (
        "import sys, abtest.client\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('flask', 'sqlalchemy', 'torch', 'celery')"
        " or (m.startswith('abtest.') and not m.startswith('abtest.client'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_api_errors_survive_pickling() -> None:
    import pickle

    err = sdk.EngineError(502, "engine_failed", "CUDA error", {"engine": "v2"}, "req-3", None)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is sdk.EngineError
    assert (copy.status, copy.code, copy.message, copy.details, copy.request_id) == (
        502, "engine_failed", "CUDA error", {"engine": "v2"}, "req-3")
    assert str(copy) == "502 engine_failed: CUDA error (request_id=req-3)"
