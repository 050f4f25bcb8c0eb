"""The non-I/O core shared by Client and AsyncClient (abtest.client._common)."""

from __future__ import annotations

import dataclasses
import inspect
import random

import httpx
import pytest

from abtest.client import AsyncClient, Client
from abtest.client._common import (
    DEFAULTS,
    HEALTH_CALL,
    ClientOptions,
    assign_call,
    infer_call,
    report_call,
    retry_delay,
)
from abtest.client._exceptions import BadRequestError, RateLimitError, ServiceUnavailableError
from abtest.client._http import Backoff
from abtest.client._models import AssignResult, InferResult


def _keyword_defaults(cls: type) -> dict[str, object]:
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.kind is p.KEYWORD_ONLY}


def test_both_clients_take_the_shared_options_with_the_shared_defaults() -> None:
    shared = {f.name: f.default for f in dataclasses.fields(ClientOptions)}
    sync, async_ = _keyword_defaults(Client), _keyword_defaults(AsyncClient)
    assert {k: sync[k] for k in shared} == shared == {k: async_[k] for k in shared}
    assert set(sync) - set(shared) == {"transport", "http_client", "sleep", "rng", "sticky_store"}
    assert set(async_) - set(shared) == {"transport", "sleep", "rng", "sticky_store"}


@pytest.mark.parametrize("options", [{"batch_size": 1001}, {"batch_size": 0}, {"on_full": "spill"},
                                     {"max_buffer": 10, "batch_size": 20}, {"flush_interval": 0},
                                     {"max_retries": -1}])
def test_invalid_options_are_refused_once_for_both_clients(options: dict[str, object]) -> None:
    with pytest.raises(ValueError) as shared:
        ClientOptions(**options)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as sync:
        Client("http://x", "k", **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as async_:
        AsyncClient("http://x", "k", **options)  # type: ignore[arg-type]
    assert str(shared.value) == str(sync.value) == str(async_.value)


def test_calls_carry_method_path_body_and_result_type() -> None:
    assert assign_call("e", "u", {"country": "FR"}) == (
        "POST", "/v1/assign", {"experiment": "e", "unit_id": "u", "attributes": {"country": "FR"}}, AssignResult)
    call = infer_call("e", "u", "hi", None, max_new_tokens=4, temperature=None, top_p=None, seed=1, stop=("\n",))
    assert call == ("POST", "/v1/infer", {"experiment": "e", "unit_id": "u", "prompt": "hi", "max_new_tokens": 4,
                                          "seed": 1, "stop": ["\n"]}, InferResult)
    assert report_call("a/b c") == ("GET", "/v1/experiments/a%2Fb%20c/report", None, None)
    assert HEALTH_CALL == ("GET", "/healthz", None, None)
    assert HEALTH_CALL.parse(httpx.Response(200, json={"status": "ok"})) == {"status": "ok"}


def test_retry_delay_is_a_pure_decision() -> None:
    backoff = Backoff(base=1.0, cap=8.0, max_retry_after=30.0, rng=random.Random(0))
    request = httpx.Request("POST", "http://x/v1/infer")
    not_sent = httpx.ConnectError("refused", request=request)
    maybe_sent = httpx.ReadTimeout("slow", request=request)
    assert 0.0 <= retry_delay(0, 3, not_sent, backoff) <= 1.0  # type: ignore[operator]
    assert 0.0 <= retry_delay(2, 3, not_sent, backoff) <= 4.0  # type: ignore[operator]
    assert retry_delay(3, 3, not_sent, backoff) is None  # retries spent
    assert retry_delay(0, 3, maybe_sent, backoff) is None  # the server may have done the work
    assert retry_delay(0, 3, ServiceUnavailableError(503, "busy", "x", None, None, 2.0), backoff) == 2.0
    assert retry_delay(0, 3, RateLimitError(429, "slow", "x", None, None, 99.0), backoff) == 30.0  # clamped
    assert retry_delay(0, 3, BadRequestError(400, "bad", "x", None, None, None), backoff) is None
    assert retry_delay(0, 0, ServiceUnavailableError(503, "busy", "x", None, None, None), backoff) is None
    assert DEFAULTS == ClientOptions()
