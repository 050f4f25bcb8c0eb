"""Everything the sync and async clients share that is not I/O.

Options (defaults and validation), the request each API call sends, how its
response becomes a result, and the retry decision are written once here; each
client only performs the requests and the waits (blocking or awaited), so the
two cannot drift apart.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence
from urllib.parse import quote

import httpx

from ._events import MAX_BATCH, ON_FULL_POLICIES, check_json, check_text
from ._exceptions import APIError
from ._http import API_RETRY_STATUSES, Backoff, json_body, parse_result, request_not_sent
from ._local import EVALUATIONS, UNAVAILABLE_POLICIES
from ._models import AssignResult, InferResult

__all__ = [
    "USER_AGENT",
    "ClientOptions",
    "DEFAULTS",
    "Call",
    "assign_call",
    "infer_call",
    "report_call",
    "HEALTH_CALL",
    "retry_delay",
    "assign_payload",
    "infer_payload",
    "check_event_options",
]

USER_AGENT = "abtest-python-client/0.1"


def check_event_options(batch_size: int, flush_interval: float, max_buffer: int, on_full: str) -> None:
    """Validate the event-pipeline settings shared by both clients."""
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be in 1..{MAX_BATCH} (the server's limit), got {batch_size}")
    if flush_interval <= 0:
        raise ValueError(f"flush_interval must be > 0, got {flush_interval}")
    if max_buffer < batch_size:
        raise ValueError(f"max_buffer ({max_buffer}) must be >= batch_size ({batch_size})")
    if on_full not in ON_FULL_POLICIES:
        raise ValueError(f"on_full must be one of {ON_FULL_POLICIES}, got {on_full!r}")


@dataclass(frozen=True)
class ClientOptions:
    """The tuning options both clients take, with their defaults; invalid ones raise ValueError.

    The clients' signatures take their defaults from :data:`DEFAULTS`, so a default is
    written only here (see ``Client`` for what each option does).
    """

    timeout: float = 10.0
    max_retries: int = 3
    batch_size: int = 500
    flush_interval: float = 1.0
    max_buffer: int = 10_000
    on_full: str = "block"
    block_timeout: float = 0.5
    close_timeout: float = 10.0
    backoff_base: float = 0.1
    backoff_max: float = 10.0
    max_retry_after: float = 60.0
    evaluation: str = "remote"
    refresh_interval: float = 30.0
    push: bool = False
    fallback_variant: str = "control"
    on_unavailable: str = "fallback"

    def __post_init__(self) -> None:
        check_event_options(self.batch_size, self.flush_interval, self.max_buffer, self.on_full)
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.evaluation not in EVALUATIONS:
            raise ValueError(f"evaluation must be one of {EVALUATIONS}, got {self.evaluation!r}")
        if not self.refresh_interval > 0:
            raise ValueError(f"refresh_interval must be > 0, got {self.refresh_interval}")
        if self.on_unavailable not in UNAVAILABLE_POLICIES:
            raise ValueError(f"on_unavailable must be one of {UNAVAILABLE_POLICIES}, got {self.on_unavailable!r}")

    @property
    def local(self) -> bool:
        return self.evaluation == "local"

    def make_backoff(self, rng: random.Random | None) -> Backoff:
        """The backoff shared by API retries and event-batch resends."""
        return Backoff(self.backoff_base, self.backoff_max, self.max_retry_after, rng or random.Random())

    def pipeline_options(self, backoff: Backoff, sleep: Any) -> dict[str, Any]:
        """Keyword arguments of ``EventPipeline`` / ``AsyncEventPipeline``."""
        return {
            "batch_size": self.batch_size, "flush_interval": self.flush_interval,
            "max_buffer": self.max_buffer, "on_full": self.on_full, "block_timeout": self.block_timeout,
            "request_timeout": self.timeout, "backoff": backoff, "sleep": sleep,
        }

    def request_timeout(self, timeout: float | None) -> float:
        """A call's timeout: its own, else the client's."""
        return self.timeout if timeout is None else timeout


DEFAULTS = ClientOptions()


# ---------------------------------------------------------------- requests and results
def assign_payload(experiment: str, unit_id: str, attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Body of ``POST /v1/assign``, checked before sending: ValueError names the bad argument."""
    body: dict[str, Any] = {"experiment": check_text("experiment", experiment),
                            "unit_id": check_text("unit_id", unit_id)}
    if attributes is not None:
        body["attributes"] = dict(attributes)
        check_json("attributes", body["attributes"])
    return body


def infer_payload(
    experiment: str, unit_id: str, prompt: str, attributes: Mapping[str, Any] | None, **params: Any
) -> dict[str, Any]:
    """Body of ``POST /v1/infer``, checked like :func:`assign_payload`; unset
    optional parameters are omitted so the server's defaults apply."""
    body = assign_payload(experiment, unit_id, attributes)
    body["prompt"] = prompt
    body.update({k: v for k, v in params.items() if v is not None})
    for name in ("prompt", *params):
        check_json(name, body.get(name))  # NUL / lone surrogates (prompt, stop), NaN (temperature...)
    return body


class Call(NamedTuple):
    """One API call: what to send, and the result type its 2xx response becomes
    (``None``: the response's JSON object as is)."""

    method: str
    path: str
    body: dict[str, Any] | None
    result: type | None = None

    def parse(self, response: httpx.Response) -> Any:
        """The call's result from a 2xx response (:class:`InvalidResponseError` if malformed)."""
        if self.result is None:
            return json_body(response)
        return parse_result(self.result, response)


def assign_call(experiment: str, unit_id: str, attributes: Mapping[str, Any] | None) -> Call:
    return Call("POST", "/v1/assign", assign_payload(experiment, unit_id, attributes), AssignResult)


def infer_call(
    experiment: str, unit_id: str, prompt: str, attributes: Mapping[str, Any] | None, *,
    max_new_tokens: int | None, temperature: float | None, top_p: float | None, seed: int | None,
    stop: Sequence[str] | None,
) -> Call:
    body = infer_payload(
        experiment, unit_id, prompt, attributes, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p, seed=seed, stop=list(stop) if stop else None,
    )
    return Call("POST", "/v1/infer", body, InferResult)


def report_call(experiment: str) -> Call:
    return Call("GET", f"/v1/experiments/{quote(experiment, safe='')}/report", None)


HEALTH_CALL = Call("GET", "/healthz", None)


# ---------------------------------------------------------------- retry policy
def retry_delay(
    retries_done: int, max_retries: int, failure: httpx.HTTPError | APIError, backoff: Backoff
) -> float | None:
    """Seconds to wait before retrying a failed ``assign``/``infer``/... call, or ``None``
    to give up and raise. No I/O: the caller sleeps (or awaits) and resends.

    A call is retried, at most ``max_retries`` times, only when the server certainly did
    not act on it: a transport failure before the request was sent, or a 429/503 refusal
    (whose ``Retry-After`` overrides the exponential backoff).
    """
    if retries_done >= max_retries:
        return None
    if isinstance(failure, APIError):
        if failure.status not in API_RETRY_STATUSES:
            return None
        return backoff.delay(retries_done + 1, failure.retry_after)
    if not request_not_sent(failure):
        return None
    return backoff.delay(retries_done + 1, None)
