"""Sticky bucketing: units keep their variant across a weight change, on the server (its
database store, or Redis shared with clients) and in locally evaluating clients; new units
follow the new weights; a failing store degrades to plain hashing with a counted warning."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from abtest.client import Client
from abtest.client.evaluation import ExperimentConfig, VariantConfig, assign
from abtest.client.sticky import GuardedSticky, InMemoryStickyStore, RedisStickyStore
from abtest.models import StickyAssignment

UNITS = [f"user-{i}" for i in range(240)]


def _variants(treatment: float) -> list[dict[str, Any]]:
    return [{"key": "control", "engine": "v1-fp32", "weight": 1 - treatment, "control": True},
            {"key": "treatment", "engine": "v2-int4", "weight": treatment}]


def _assign(client: Any, sdk: dict[str, str], unit: str) -> dict[str, Any]:
    return client.post("/v1/assign", json={"experiment": "ramp", "unit_id": unit}, headers=sdk).get_json()


def test_server_keeps_units_through_a_ramp_and_new_units_follow_the_new_weights(
        client, admin, sdk, services, make_experiment) -> None:
    make_experiment("ramp", start=True, sticky=True, variants=_variants(0.1))
    before = {u: _assign(client, sdk, u)["variant"] for u in UNITS}
    reply = client.patch("/v1/experiments/ramp", json={"variants": _variants(0.5)}, headers=admin)
    assert reply.get_json()["phase"] == 2
    after = [_assign(client, sdk, u) for u in UNITS]
    assert [a["variant"] for a in after] == [before[u] for u in UNITS]
    assert {a["reason"] for a in after} == {"sticky"}
    newcomers = [_assign(client, sdk, f"new-{i}") for i in range(300)]
    share = sum(a["variant"] == "treatment" for a in newcomers) / len(newcomers)
    assert 0.4 < share < 0.6 and {a["reason"] for a in newcomers} == {"assigned"}
    old_share = sum(v == "treatment" for v in before.values()) / len(before)
    assert old_share < 0.2
    with services.db.session() as session:
        rows = {r.unit_id: (r.variant, r.phase) for r in session.scalars(select(StickyAssignment))}
    assert {u: rows[u] for u in UNITS} == {u: (before[u], 1) for u in UNITS}
    assert all(rows[f"new-{i}"][1] == 2 for i in range(300))


def test_a_non_sticky_experiment_rerandomizes(client, admin, sdk, make_experiment) -> None:
    make_experiment("ramp", start=True, variants=_variants(0.5))
    before = {u: _assign(client, sdk, u)["variant"] for u in UNITS}
    client.patch("/v1/experiments/ramp", json={"variants": _variants(0.49)}, headers=admin)
    moved = sum(_assign(client, sdk, u)["variant"] != before[u] for u in UNITS)
    assert moved > 60  # about half move under a fresh hash


def test_a_local_client_honours_the_servers_sticky_rows_via_a_shared_redis(
        app, client, admin, sdk, services, make_experiment, redis_url) -> None:
    shared = RedisStickyStore.from_url(redis_url, prefix=f"abtest:test-sticky:{uuid.uuid4().hex}:")
    services.assigner.sticky = GuardedSticky(shared)  # the server on the same Redis as the client
    make_experiment("ramp", start=True, sticky=True, variants=_variants(0.1))
    before = {u: _assign(client, sdk, u)["variant"] for u in UNITS[:120]}
    client.patch("/v1/experiments/ramp", json={"variants": _variants(0.5)}, headers=admin)
    with Client("http://testserver", sdk["Authorization"].split()[1], transport=httpx.WSGITransport(app=app),
                evaluation="local", refresh_interval=3600, sticky_store=shared) as local:
        kept = [local.assign("ramp", u) for u in UNITS[:120]]
        assert [r.variant for r in kept] == [before[u] for u in UNITS[:120]]
        assert {r.reason for r in kept} == {"sticky"}
        fresh = {u: local.assign("ramp", u).variant for u in UNITS[120:]}  # first seen by the client
        assert local.flush(timeout=30)
    # the server now answers the client's fresh units from the same store
    assert {u: _assign(client, sdk, u)["variant"] for u in UNITS[120:]} == fresh
    assert {_assign(client, sdk, u)["reason"] for u in UNITS[120:]} == {"sticky"}
    with services.db.session() as session:  # and the client's exposures wrote the sticky rows
        rows = {r.unit_id: r.variant for r in session.scalars(select(StickyAssignment))}
    assert {u: rows[u] for u in UNITS[120:]} == fresh


def _config(treatment: float, phase: int) -> ExperimentConfig:
    return ExperimentConfig(1, "ramp", "running", "salt", phase, 1.0, (
        VariantConfig("control", "a", 1 - treatment, True), VariantConfig("treatment", "b", treatment)),
        sticky=True)


def test_a_redis_outage_degrades_to_plain_hashing_with_a_counted_warning(caplog) -> None:
    down = RedisStickyStore.from_url("redis://127.0.0.1:1/0", timeout_s=0.05)  # nothing listens there
    guard = GuardedSticky(down, pause_s=0.0)
    caplog.set_level(logging.WARNING, logger="abtest.sticky")
    config = _config(0.5, 2)
    for unit in UNITS[:50]:
        stored = guard.get("ramp", unit)
        assert stored is None
        assert assign(config, unit, None, stored) == assign(config, unit)  # plain hashing
        guard.save("ramp", unit, "treatment")
    assert guard.failures == 100
    warnings = [r for r in caplog.records if r.name == "abtest.sticky"]
    assert len(warnings) == 1 and "plain hashing" in warnings[0].getMessage()


def test_a_failing_store_never_fails_a_local_assign() -> None:
    from abtest.client import definitions as defs

    class Broken(InMemoryStickyStore):
        def get(self, experiment: str, unit_id: str) -> str | None:
            raise ConnectionError("store down")

    doc = defs.document([_config(0.5, 1)])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/exposures":
            return httpx.Response(202, json={"accepted": 1, "duplicates": 0, "rejected": []})
        return httpx.Response(200, json=doc)

    with Client("http://x", "k", transport=httpx.MockTransport(handler), evaluation="local",
                sticky_store=Broken()) as c:
        results = [c.assign("ramp", u) for u in UNITS[:20]]
        assert [r.variant for r in results] == [assign(_config(0.5, 1), u).variant for u in UNITS[:20]]
        status = c.definitions
        assert status is not None and status.sticky_failures >= 1


def test_in_memory_store_keeps_the_first_variant() -> None:
    store = InMemoryStickyStore()
    store.save("e", "u", "a")
    store.save("e", "u", "b")
    assert store.get("e", "u") == "a" and store.get("e", "v") is None and len(store) == 1


@pytest.mark.parametrize("stored,expected", [("treatment", ("treatment", "sticky")), ("gone", (None, "assigned"))])
def test_a_stored_variant_that_no_longer_exists_is_ignored(stored: str, expected: tuple[Any, str]) -> None:
    config = _config(0.0, 2)
    result = assign(config, "u", None, stored)
    assert result.reason == expected[1]
    assert result.variant == (expected[0] or "control")


def test_the_cli_update_flag_sets_sticky() -> None:
    from abtest.cli_experiments_flags import patch_body

    opts = {f: None for f in ("name", "owner", "hypothesis", "coverage", "decision", "quality_sample", "weights")}
    body = patch_body({"variants": [], "forced": {}}, {}, {**opts, "force": (), "unforce": (), "files": {},
                                                          "sticky": True})
    assert body == {"sticky": True}


def test_the_server_assigns_by_plain_hashing_while_its_redis_store_is_down(
        client, sdk, services, make_experiment) -> None:
    from abtest.config import Settings
    from abtest.services.sticky import server_sticky

    services.assigner.sticky = server_sticky(Settings(sticky_redis_url="redis://127.0.0.1:1/0"), services.db)
    make_experiment("ramp", start=True, sticky=True, variants=_variants(0.5))
    config = services.configs.get("ramp")
    replies = [client.post("/v1/assign", json={"experiment": "ramp", "unit_id": u}, headers=sdk) for u in UNITS[:30]]
    assert {r.status_code for r in replies} == {200}
    assert [r.get_json()["variant"] for r in replies] == [assign(config, u).variant for u in UNITS[:30]]
    assert services.assigner.sticky.failures >= 1
