"""The quality hook hears of requests served through the OpenAI routes, streamed or not,
exactly as of /v1/infer's: each is scored once, off the request path."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from abtest.models import QualityScore, RequestLog

from .test_quality_e2e import quality_app, start  # noqa: F401 - the app fixture and experiment

pytest.importorskip("torch")


def test_openai_requests_are_scored(quality_app) -> None:  # noqa: F811
    app, headers = quality_app
    start(app, headers, reference="v2-fp32")
    client = app.test_client()
    for i in range(8):
        reply = client.post("/v1/chat/completions", headers=headers, json={
            "model": "q", "messages": [{"role": "user", "content": f"count to {i}"}], "user": f"u{i}",
            "max_tokens": 6, "temperature": 0, "stream": i % 2 == 0})
        assert reply.status_code == 200
        reply.get_data()
    services = app.extensions["abtest"]
    assert services.quality.wait_idle(300)
    with services.db.session() as session:
        scored = [s.request_id for s in session.scalars(select(QualityScore))]
        served = {r.request_id for r in session.scalars(select(RequestLog)) if r.status == "ok"}
    assert len(served) == 8 and sorted(scored) == sorted(served)  # each once, streamed ones too
