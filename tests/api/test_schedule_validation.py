"""Schedules through the API: ramp steps, start_at and stop_at are validated field by field
(422 naming the field, nothing written) and shown in the experiment's JSON."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.conftest import experiment_payload

SOON = (datetime.now(timezone.utc) + timedelta(days=30)).replace(microsecond=0)


def iso(days: float = 0.0, base: datetime = SOON) -> str:
    return (base + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def ramp(*coverages: float) -> list[dict[str, Any]]:
    return [{"at": iso(i), "coverage": c} for i, c in enumerate(coverages)]


BAD_CREATES = [
    ({"ramp": [*ramp(0.1, 0.5), {"at": iso(0.5), "coverage": 1.0}]}, "ramp[2].at", "strictly increasing"),
    ({"ramp": [*ramp(0.1), {"at": iso(0), "coverage": 0.2}]}, "ramp[1].at", "strictly increasing"),
    ({"ramp": ramp(0.1, 1.5)}, "ramp[1].coverage", "<= 1.0"),
    ({"ramp": ramp(0.1, -0.1)}, "ramp[1].coverage", ">= 0.0"),
    ({"ramp": [{"at": "2026-12-01T10:00:00", "coverage": 0.1}]}, "ramp[0].at", "no timezone"),
    ({"ramp": [{"at": "next tuesday", "coverage": 0.1}]}, "ramp[0].at", "ISO-8601"),
    ({"ramp": [{"at": 1764583200, "coverage": 0.1}]}, "ramp[0].at", "ISO-8601"),
    ({"ramp": [{"coverage": 0.1}]}, "ramp[0].at", "is required"),
    ({"ramp": [{"at": iso(), "coverage": 0.1, "note": "x"}]}, "ramp[0].note", "unknown field"),
    ({"ramp": [{"at": iso(), "coverage": "half"}]}, "ramp[0].coverage", "must be a number"),
    ({"ramp": [{"at": iso(i / 24), "coverage": 0.01} for i in range(51)]}, "ramp", "at most 50 steps"),
    ({"ramp": {"at": iso(), "coverage": 0.1}}, "ramp", "must be a list"),
    ({"ramp": ["2026-12-01T10:00:00Z"]}, "ramp[0]", "JSON object"),
    ({"start_at": "2026-12-01"}, "start_at", "no timezone"),
    ({"start_at": iso(-60)}, "start_at", "in the past"),
    ({"stop_at": iso(-60)}, "stop_at", "in the past"),
    ({"start_at": iso(2), "stop_at": iso(1)}, "stop_at", "after start_at"),
    ({"start_at": iso(1), "stop_at": iso(1)}, "stop_at", "after start_at"),
    ({"stop_at": "2026-13-01T00:00:00Z"}, "stop_at", "ISO-8601"),
]


@pytest.mark.parametrize("fields, field, words", BAD_CREATES)
def test_a_bad_schedule_is_refused_naming_the_field_and_nothing_is_written(client, admin, fields, field,
                                                                           words) -> None:
    reply = client.post("/v1/experiments", json=experiment_payload("sched", **fields), headers=admin)
    assert reply.status_code == 422, reply.get_json()
    error = reply.get_json()["error"]
    assert error["details"]["field"] == field and words in error["message"], error
    assert client.get("/v1/experiments/sched", headers=admin).status_code == 404


def test_the_view_lists_the_schedule_with_each_step_pending(client, admin) -> None:
    body = {"ramp": [{"at": "2100-01-01T12:00:00+02:00", "coverage": 0.1}, {"at": iso(), "coverage": 0.5}],
            "start_at": "2099-12-31T09:00:00-05:00", "stop_at": "2100-02-01T00:00:00Z"}
    reply = client.post("/v1/experiments", json=experiment_payload("sched", **body), headers=admin)
    assert reply.status_code == 422  # 2100 comes after SOON: out of time order
    assert reply.get_json()["error"]["details"]["field"] == "ramp[1].at"
    body["ramp"] = body["ramp"][:1] + [{"at": "2100-01-02T00:00:00Z", "coverage": 0.5}]
    view = client.post("/v1/experiments", json=experiment_payload("sched", **body), headers=admin).get_json()
    assert view["ramp"] == [
        {"at": "2100-01-01T10:00:00+00:00", "coverage": 0.1, "state": "pending", "applied_at": None},
        {"at": "2100-01-02T00:00:00+00:00", "coverage": 0.5, "state": "pending", "applied_at": None}]
    assert view["start_at"] == "2099-12-31T14:00:00+00:00" and view["stop_at"] == "2100-02-01T00:00:00+00:00"
    plain = client.post("/v1/experiments", json=experiment_payload("plain"), headers=admin).get_json()
    assert (plain["ramp"], plain["start_at"], plain["stop_at"]) == ([], None, None)


def test_patch_replaces_the_schedule_validated_the_same_way(client, admin, make_experiment) -> None:
    make_experiment("sched", ramp=ramp(0.1, 0.5), stop_at=iso(10))
    before = client.get("/v1/experiments/sched", headers=admin).get_json()
    audit = len(client.get("/v1/experiments/sched/audit", headers=admin).get_json()["entries"])
    for fields, field in [({"ramp": ramp(0.2, 2.0)}, "ramp[1].coverage"),
                          ({"ramp": [*ramp(0.2, 0.3), {"at": iso(-1), "coverage": 1}]}, "ramp[2].at"),
                          ({"start_at": iso(11)}, "start_at"),  # after the stored stop_at
                          ({"start_at": iso(9), "stop_at": iso(8)}, "stop_at"),
                          ({"stop_at": iso(-40)}, "stop_at"),
                          ({"coverage": 0.3, "ramp": [{"at": iso(), "coverage": 0.2, "when": 1}]}, "ramp[0].when")]:
        reply = client.patch("/v1/experiments/sched", json=fields, headers=admin)
        assert reply.status_code == 422 and reply.get_json()["error"]["details"]["field"] == field, reply.get_json()
    assert client.get("/v1/experiments/sched", headers=admin).get_json() == before  # nothing half-written
    assert len(client.get("/v1/experiments/sched/audit", headers=admin).get_json()["entries"]) == audit

    after = client.patch("/v1/experiments/sched", json={"ramp": ramp(0.3), "start_at": iso(1), "stop_at": None},
                         headers=admin).get_json()
    assert [(s["coverage"], s["state"]) for s in after["ramp"]] == [(0.3, "pending")]
    assert after["start_at"] is not None and after["stop_at"] is None
    entry = client.get("/v1/experiments/sched/audit", headers=admin).get_json()["entries"][-1]
    assert entry["action"] == "update" and {"ramp", "start_at", "stop_at"} <= set(entry["changes"])
    cleared = client.patch("/v1/experiments/sched", json={"ramp": None, "start_at": None}, headers=admin).get_json()
    assert cleared["ramp"] == [] and cleared["start_at"] is None


def test_a_started_or_stopped_experiment_refuses_schedule_changes_that_no_longer_apply(client, admin,
                                                                                       make_experiment) -> None:
    make_experiment("sched", start=True)
    reply = client.patch("/v1/experiments/sched", json={"start_at": iso(1)}, headers=admin)
    assert reply.status_code == 422 and reply.get_json()["error"]["details"]["field"] == "start_at"
    assert "already started" in reply.get_json()["error"]["message"]
    ok = client.patch("/v1/experiments/sched", json={"ramp": ramp(0.5), "stop_at": iso(3)}, headers=admin)
    assert ok.status_code == 200 and ok.get_json()["stop_at"] is not None
    stopped = client.post("/v1/experiments/sched/stop", headers=admin).get_json()
    assert stopped["stop_at"] is None  # a manual stop clears the pending stop time
    reply = client.patch("/v1/experiments/sched", json={"ramp": ramp(0.9)}, headers=admin)
    assert reply.status_code == 409 and "stopped" in reply.get_json()["error"]["message"]
