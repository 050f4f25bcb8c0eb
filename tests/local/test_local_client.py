"""Client(evaluation="local"): same answers as the server, exposures through the pipeline,
no definitions, stale definitions, and invalid ones."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from abtest.client import AsyncClient, Client, DefinitionsUnavailableError, NotFoundError
from abtest.client import definitions as defs
from abtest.client.evaluation import ExperimentConfig, VariantConfig
from abtest.models import Exposure


def local_client(app: Any, headers: dict[str, str], **options: Any) -> Client:
    key = headers["Authorization"].split()[1]
    options.setdefault("refresh_interval", 3600.0)
    return Client("http://testserver", key, transport=httpx.WSGITransport(app=app), evaluation="local", **options)


def test_local_answers_match_the_server_and_exposures_land_like_server_side_ones(
        app, client, sdk, services, make_experiment) -> None:
    make_experiment("exp-1", start=True, coverage=0.7, forced={"qa": "treatment"},
                    targeting=[{"attribute": "plan", "op": "neq", "value": "free"}])
    units = [f"user-{i}" for i in range(200)]
    with local_client(app, sdk) as local:
        for unit in units:
            for attrs in ({"plan": "pro"}, {"plan": "free"}):
                mine = local.assign("exp-1", unit, attrs)
                theirs = client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": unit,
                                                         "attributes": attrs}, headers=sdk).get_json()
                assert mine.raw == theirs
        local.assign("exp-1", "qa")
        assert local.flush(timeout=30)
        stats = local.exposure_stats
        assert stats is not None and stats.sent > 0 and stats.dropped == stats.rejected == 0
        with pytest.raises(NotFoundError):
            local.assign("missing", "u")
    with services.db.session() as session:
        rows = {e.unit_id: e for e in session.scalars(select(Exposure))}
    enrolled = {u for u in units if client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": u,
                                                                     "attributes": {"plan": "pro"}},
                                                headers=sdk).get_json()["in_experiment"]}
    assert set(rows) == enrolled and "qa" not in rows  # forced units stay out of the analysis
    # per enrolled unit: the client's exposure and the server's, both for "pro" only (targeting)
    assert {r.count for r in rows.values()} == {2}


def test_no_definitions_at_start_answers_the_fallback_or_raises() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with Client("http://x", "k", transport=httpx.MockTransport(down), evaluation="local") as c:
        result = c.assign("exp", "u")
        assert (result.variant, result.engine, result.in_experiment, result.reason) == (
            "control", None, False, "definitions_unavailable")
        status = c.definitions
        assert status is not None and status.version is None and status.refresh_failures == 1
        assert status.age_s is None and "ConnectError" in (status.last_error or "")
    with Client("http://x", "k", transport=httpx.MockTransport(down), evaluation="local",
                on_unavailable="raise") as c, pytest.raises(DefinitionsUnavailableError):
        c.assign("exp", "u")


def _config(key: str = "exp", weight: float = 0.5) -> ExperimentConfig:
    return ExperimentConfig(1, key, "running", "salt", 1, 1.0, (
        VariantConfig("control", "a", 1 - weight, True), VariantConfig("treatment", "b", weight)))


class Definitions:
    """A definitions endpoint whose answer the test sets (``doc``, or ``fail`` for a 503)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc, self.fail, self.requests = doc, False, 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/exposures":
            n = len(json.loads(request.content)["exposures"])
            return httpx.Response(202, json={"accepted": n, "duplicates": 0, "rejected": []})
        self.requests += 1
        if self.fail:
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "down"}})
        if request.headers.get("If-None-Match") == f'"{self.doc.get("version")}"':
            return httpx.Response(304)
        return httpx.Response(200, json=self.doc)


def test_invalid_definitions_are_refused_whole_and_the_previous_kept() -> None:
    server = Definitions(defs.document([_config(weight=0.0)]))
    with Client("http://x", "k", transport=httpx.MockTransport(server.handler), evaluation="local",
                refresh_interval=3600) as c:
        assert c.assign("exp", "u1").variant == "control"
        good = c.definitions
        bad = defs.document([_config(weight=1.0), _config("other")])
        bad["experiments"][1]["variants"][0]["weight"] = "heavy"  # one bad field anywhere
        server.doc = bad
        status = c.refresh()
        assert status.rejected == 1 and status.version == good.version and status.experiments == 1
        assert "experiments[1].variants[0].weight" in (status.last_error or "")
        assert c.assign("exp", "u1").variant == "control"  # still the old weights
        server.doc = defs.document([_config(weight=1.0)])
        assert c.refresh().version != good.version and c.assign("exp", "u1").variant == "treatment"


def test_stale_definitions_keep_serving_and_report_their_age() -> None:
    server = Definitions(defs.document([_config(weight=1.0)]))
    with Client("http://x", "k", transport=httpx.MockTransport(server.handler), evaluation="local",
                refresh_interval=3600) as c:
        assert c.refresh().not_modified == 1  # unchanged: a 304, no body
        server.fail = True
        status = c.refresh()
        assert status.refresh_failures == 1 and "503" in (status.last_error or "")
        assert c.assign("exp", "u").variant == "treatment"
        later = c.definitions
        assert later is not None and later.age_s is not None and later.age_s >= status.age_s


def test_async_client_evaluates_locally_with_the_same_results() -> None:
    import asyncio

    server = Definitions(defs.document([_config(weight=0.5)]))

    async def async_handler(request: httpx.Request) -> httpx.Response:
        return server.handler(request)

    async def run() -> list[Any]:
        async with AsyncClient("http://x", "k", transport=httpx.MockTransport(async_handler),
                               evaluation="local", refresh_interval=3600) as c:
            results = [await c.assign("exp", f"u{i}") for i in range(50)]
            assert await c.flush(timeout=10)
            stats = c.exposure_stats
            assert stats is not None and stats.sent == 50
            return results

    results = asyncio.run(run())
    with Client("http://x", "k", transport=httpx.MockTransport(server.handler), evaluation="local") as c:
        assert [c.assign("exp", f"u{i}") for i in range(50)] == results
    assert {r.reason for r in results} == {"assigned"} and len({r.variant for r in results}) == 2


def test_more_exposures_than_the_buffer_holds_are_all_delivered() -> None:
    server = Definitions(defs.document([_config(weight=0.5)]))
    with Client("http://x", "k", transport=httpx.MockTransport(server.handler), evaluation="local",
                refresh_interval=3600, batch_size=50, max_buffer=50) as c:
        for i in range(1000):  # 1000 distinct units: one aggregated item each, 20x the buffer
            c.assign("exp", f"u{i}")
        assert c.flush(timeout=30)
        stats = c.exposure_stats
        assert stats is not None and (stats.tracked, stats.sent, stats.dropped) == (1000, 1000, 0)


def test_flush_waits_for_exposures_a_background_drain_is_still_handing_over() -> None:
    """The refresher drains the aggregate, then puts the items into the pipeline, blocking while
    its buffer is full. A flush that starts meanwhile finds the aggregate empty; it must still
    wait for the items that drain holds, or it returns with most of them unsent."""
    import threading
    import time

    server = Definitions(defs.document([_config(weight=0.5)]))
    gate, posted = threading.Event(), threading.Event()

    def slow(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/exposures":
            posted.set()
            gate.wait(10)
            time.sleep(0.01)  # each batch takes a while, so a flush that did not wait returns early
        return server.handler(request)

    with Client("http://x", "k", transport=httpx.MockTransport(slow), evaluation="local",
                refresh_interval=3600, batch_size=10, max_buffer=10) as c:
        for i in range(300):
            c.assign("exp", f"u{i}")  # past max_buffer: the refresher drains in the background
        assert posted.wait(10)  # the first batch is on the wire; the drain is blocked on a full buffer
        done: list[bool] = []
        flusher = threading.Thread(target=lambda: done.append(c.flush(timeout=60)))
        flusher.start()
        time.sleep(0.2)
        gate.set()
        flusher.join(60)
        stats = c.exposure_stats
        assert done == [True]
        assert stats is not None and (stats.tracked, stats.sent, stats.dropped) == (300, 300, 0)
