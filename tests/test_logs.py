"""JSON logs carry the request id and outcome as fields."""

from __future__ import annotations

import json
import logging

from abtest.logs import JsonFormatter


def test_json_formatter_puts_extra_fields_on_the_line() -> None:
    record = logging.LogRecord("abtest.infer", logging.INFO, __file__, 1, "infer ok request_id=%s", ("r-1",), None)
    record.request_id, record.status, record.latency_ms = "r-1", "ok", 12.5
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "infer ok request_id=r-1"
    assert (line["request_id"], line["status"], line["latency_ms"], line["level"]) == ("r-1", "ok", 12.5, "INFO")
    assert line["ts"].endswith("+00:00")
