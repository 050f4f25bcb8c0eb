"""Segment levels on the exposures of locally evaluating clients: the definitions carry the
dimensions, the SDK computes the levels with the server's own function and sends them with
each aggregated exposure, the server checks them and stores them like server-side ones."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from abtest.client import Client
from abtest.client import definitions as defs
from abtest.client._local import ExposureBuffer
from abtest.models import Exposure
from abtest.services.experiments import get_experiment
from abtest.validation.experiments import segment_levels as server_segment_levels
from abtest.client.segments import segment_levels

DIMENSIONS = [{"attribute": "country", "levels": ["US", "DE"]}, {"attribute": "app_version", "levels": ["2", "3"]}]
ATTRIBUTES = ({"country": "US", "app_version": 2}, {"country": "DE", "app_version": "3"}, {"country": "FR"},
              {}, {"country": True, "app_version": 2.0}, {"country": ["US"]})


def _local(app, sdk) -> Client:  # type: ignore[no-untyped-def]
    key = sdk["Authorization"].split()[1]
    return Client("http://testserver", key, transport=httpx.WSGITransport(app=app), evaluation="local",
                  refresh_interval=3600.0)


def _segments(services, key: str) -> dict[str, dict | None]:  # type: ignore[no-untyped-def]
    with services.db.session() as session:
        exp_id = get_experiment(session, key).id
        return {e.unit_id: e.segments for e in session.scalars(select(Exposure).where(Exposure.experiment_id == exp_id))}


def test_the_server_and_the_sdk_share_one_segment_function() -> None:
    assert server_segment_levels is segment_levels
    assert segment_levels(DIMENSIONS, {"country": "US", "app_version": 2}) == {"country": "US", "app_version": "2"}
    assert segment_levels(DIMENSIONS, {"country": True}) == {"country": "other", "app_version": "other"}
    assert segment_levels([], {"country": "US"}) is None


def test_local_and_remote_assignment_store_the_same_segments(app, client, sdk, services, make_experiment) -> None:
    for key in ("remote", "local"):
        make_experiment(key, start=True, dimensions=DIMENSIONS)
    units = {f"u-{i}": ATTRIBUTES[i % len(ATTRIBUTES)] for i in range(60)}
    with _local(app, sdk) as local:
        for unit, attrs in units.items():
            assert client.post("/v1/assign", json={"experiment": "remote", "unit_id": unit, "attributes": attrs},
                               headers=sdk).status_code == 200
            local.assign("local", unit, attrs)
            local.assign("local", unit, {"country": "DE"})  # a later exposure keeps the first one's levels
        assert local.flush(timeout=30)
        assert local.exposure_stats is not None and local.exposure_stats.rejected == 0
    remote, local_rows = _segments(services, "remote"), _segments(services, "local")
    assert len(remote) == 60 and local_rows == remote
    assert remote["u-0"] == {"country": "US", "app_version": "2"}
    assert remote["u-2"] == {"country": "other", "app_version": "other"}


def test_the_segment_report_of_a_locally_evaluated_experiment_shows_its_segments(
        app, client, sdk, admin, services, make_experiment) -> None:
    make_experiment("seg", start=True, dimensions=[DIMENSIONS[0]])
    countries = ("US", "DE", "FR")
    with _local(app, sdk) as local:
        assigned = {f"u-{i}": (local.assign("seg", f"u-{i}", {"country": countries[i % 3]}).variant, countries[i % 3])
                    for i in range(300)}
        assert local.flush(timeout=30)
    events = [{"event_id": f"e-{u}", "unit_id": u, "name": "purchase"} for i, u in enumerate(assigned) if i % 4 == 0]
    assert client.post("/v1/events", json={"events": events}, headers=sdk).status_code == 202
    report = client.get("/v1/experiments/seg/report", headers=admin).get_json()
    (section,) = report["segments"]
    assert section["dimension"] == "country"
    levels = {lv["level"]: lv for lv in section["levels"]}
    for level, country in (("US", "US"), ("DE", "DE"), ("other", "FR")):
        expected = {v: sum(1 for var, c in assigned.values() if c == country and var == v)
                    for v in ("control", "treatment")}
        assert levels[level]["units"] == expected
        assert all(c["p_value"] is not None for c in levels[level]["comparisons"] if c["metric"] == "conversion")


def test_a_bad_segments_item_is_rejected_alone(client, sdk, services, make_experiment) -> None:
    make_experiment("exp-1", start=True, dimensions=[DIMENSIONS[0]])

    def item(i: int, segments: object) -> dict:
        return {"exposure_id": f"s-{i}", "experiment": "exp-1", "phase": 1, "unit_id": f"u{i}", "variant": "control",
                "first_seen": "2026-01-01T10:00:00Z", "last_seen": "2026-01-01T10:00:00Z", "segments": segments}

    bad = [{"plan": "pro"}, {"country": "FR"}, {"country": 1}, ["US"], {"country": "US", "os": "ios"}]
    batch = [item(0, {"country": "DE"}), *(item(i + 1, s) for i, s in enumerate(bad)), item(9, {"country": "other"})]
    body = client.post("/v1/exposures", json={"exposures": batch}, headers=sdk).get_json()
    assert body["accepted"] == 2 and [r["index"] for r in body["rejected"]] == [1, 2, 3, 4, 5]
    assert all(r["error"].startswith("segments") for r in body["rejected"])
    assert "'plan' is not a dimension of 'exp-1'" in body["rejected"][0]["error"]
    assert _segments(services, "exp-1") == {"u0": {"country": "DE"}, "u9": {"country": "other"}}


def test_the_definitions_carry_the_dimensions_and_refuse_bad_ones(client, sdk, make_experiment) -> None:
    make_experiment("exp-1", start=True, dimensions=DIMENSIONS)
    doc = client.get("/v1/sdk/definitions", headers=sdk).get_json()
    assert doc["experiments"][0]["dimensions"] == DIMENSIONS
    assert list(defs.parse(doc)[1]["exp-1"].dimensions) == DIMENSIONS
    older = {**doc, "experiments": [{k: v for k, v in doc["experiments"][0].items() if k != "dimensions"}]}
    assert defs.parse(older)[1]["exp-1"].dimensions == ()
    for bad, where in (([{"attribute": "country", "levels": [str(i) for i in range(21)]}], "dimensions[0].levels"),
                       ([{"attribute": "country", "levels": ["other"]}], "dimensions[0].levels"),
                       ([{"attribute": "country", "levels": ["US"]}] * 2, "dimensions[1].attribute"),
                       ([{"levels": ["US"]}], "dimensions[0].attribute"), ("US", "dimensions")):
        broken = {**doc, "experiments": [{**doc["experiments"][0], "dimensions": bad}]}
        with pytest.raises(defs.DefinitionsError) as info:
            defs.parse(broken)
        assert info.value.field == f"experiments[0].{where}"


def test_the_buffer_keeps_the_levels_of_a_keys_first_exposure() -> None:
    buffer = ExposureBuffer()
    dims = tuple(DIMENSIONS)
    buffer.add("e", 1, "u1", "control", False, dims, {"country": "US"})
    buffer.add("e", 1, "u1", "control", False, dims, {"country": "DE", "app_version": "3"})
    buffer.add("plain", 1, "u1", "control", False)
    items = {i["experiment"]: i for i in buffer.drain()}
    assert items["e"]["segments"] == {"country": "US", "app_version": "other"} and items["e"]["count"] == 2
    assert "segments" not in items["plain"]
