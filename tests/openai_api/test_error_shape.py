"""OpenAI's error shape for every class of abtest's exception tree: the status an OpenAI client
retries on (429, 5xx) is kept, a field that fails validation is a 400 naming ``param``."""

from __future__ import annotations

import pytest

from abtest import errors as E
from abtest.openai.errors import error_body

CASES = [
    (E.BadRequest("the body is not valid JSON"), 400, "invalid_request_error", None),
    (E.ValidationError("messages[0].role", "unknown role"), 400, "invalid_request_error", "messages[0].role"),
    (E.Unauthorized("invalid key"), 401, "authentication_error", None),
    (E.Forbidden("admin only", details={"field": "model"}), 403, "permission_error", "model"),
    (E.NotFound("no experiment"), 404, "not_found_error", None),
    (E.PayloadTooLarge("too big"), 413, "invalid_request_error", None),
    (E.RateLimited("slow down", retry_after=1), 429, "rate_limit_error", None),
    (E.UpstreamError("engine failed"), 502, "api_error", None),
    (E.ServiceUnavailable("no worker", retry_after=5), 503, "api_error", None),
    (E.UpstreamTimeout("too slow"), 504, "api_error", None),
]


@pytest.mark.parametrize("exc,status,kind,param", CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_error_body(exc, status, kind, param) -> None:
    got_status, body = error_body(exc)
    assert got_status == status
    assert body["error"] == {"message": exc.message, "type": kind, "param": param,
                             "code": "invalid_value" if status == 400 and param else exc.code}


def test_request_id_travels_with_the_error() -> None:
    exc = E.UpstreamError("engine failed", request_id="r-1")
    assert error_body(exc)[1]["request_id"] == "r-1"
