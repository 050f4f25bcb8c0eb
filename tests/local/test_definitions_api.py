"""GET /v1/sdk/definitions (ETag, 304) and POST /v1/exposures (idempotent, like server-side ones)."""

from __future__ import annotations

from sqlalchemy import select

from abtest.client import definitions as defs
from abtest.evaluator import assign
from abtest.models import Exposure, StickyAssignment
from abtest.services.experiments import get_experiment, to_config


def test_definitions_carry_every_experiment_with_an_etag_and_304(client, sdk, services, make_experiment) -> None:
    make_experiment("exp-1", start=True, targeting=[{"attribute": "country", "op": "in", "value": ["US"]}],
                    forced={"qa": "treatment"}, sticky=True)
    make_experiment("exp-2", coverage=0.3)
    reply = client.get("/v1/sdk/definitions", headers=sdk)
    assert reply.status_code == 200 and reply.headers["X-Refresh-Interval"] == "30"
    version, configs = defs.parse(reply.get_json())
    assert reply.headers["ETag"] == f'"{version}"' and set(configs) == {"exp-1", "exp-2"}
    with services.db.session() as session:
        server = {k: to_config(get_experiment(session, k)) for k in configs}
    assert configs["exp-1"].sticky and configs["exp-1"].forced == {"qa": "treatment"}
    for key, config in configs.items():
        for unit in (f"u{i}" for i in range(300)):
            for attrs in ({"country": "US"}, {"country": "FR"}, {}):
                assert assign(config, unit, attrs) == assign(server[key], unit, attrs)

    again = client.get("/v1/sdk/definitions", headers={**sdk, "If-None-Match": reply.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    client.patch("/v1/experiments/exp-2", json={"coverage": 0.5}, headers=_admin(services))
    changed = client.get("/v1/sdk/definitions", headers={**sdk, "If-None-Match": reply.headers["ETag"]})
    assert changed.status_code == 200 and defs.parse(changed.get_json())[1]["exp-2"].coverage == 0.5


def test_definitions_need_a_key(client) -> None:
    assert client.get("/v1/sdk/definitions").status_code == 401


def _admin(services):  # type: ignore[no-untyped-def]
    from abtest.services.keys import create_key

    with services.db.transaction() as session:
        return {"Authorization": f"Bearer {create_key(session, 'admin-2', 'admin')}"}


def _item(exposure_id: str, unit: str, **overrides):  # type: ignore[no-untyped-def]
    item = {"exposure_id": exposure_id, "experiment": "exp-1", "phase": 1, "unit_id": unit,
            "variant": "treatment", "first_seen": "2026-01-01T10:00:00Z", "last_seen": "2026-01-01T10:05:00Z",
            "count": 3}
    item.update(overrides)
    return item


def test_exposures_are_counted_once_per_id_and_merge_with_server_side_ones(client, sdk, services,
                                                                           make_experiment) -> None:
    make_experiment("exp-1", start=True, sticky=True)
    server_side = client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": "u1"}, headers=sdk).get_json()
    batch = {"exposures": [_item("a-1", "u1", variant=server_side["variant"]), _item("a-2", "u2", sticky=True),
                           _item("a-2", "u2", sticky=True)]}
    first = client.post("/v1/exposures", json=batch, headers=sdk)
    assert first.status_code == 202 and first.get_json() == {"accepted": 2, "duplicates": 1, "rejected": []}
    resent = client.post("/v1/exposures", json=batch, headers=sdk).get_json()
    assert resent == {"accepted": 0, "duplicates": 3, "rejected": []}
    with services.db.session() as session:
        rows = {e.unit_id: e for e in session.scalars(select(Exposure))}
        sticky = {s.unit_id: (s.variant, s.phase) for s in session.scalars(select(StickyAssignment))}
    assert rows["u1"].count == 1 + 3 and rows["u2"].count == 3  # the server's one plus the client's three
    assert rows["u2"].first_seen.isoformat() == "2026-01-01T10:00:00+00:00"
    assert sticky["u2"] == ("treatment", 1) and sticky["u1"] == (server_side["variant"], 1)


def test_bad_exposures_are_rejected_one_by_one_naming_the_field(client, sdk, services, make_experiment) -> None:
    make_experiment("exp-1", start=True)
    batch = {"exposures": [_item("b-1", "u1", variant="nope"), _item("b-2", "u2", phase=2),
                           _item("b-3", "u3", experiment="missing"), _item("b-4", "u4", count=0),
                           _item("b-5", "u5", first_seen="2026-01-02T00:00:00Z"), _item("b-6", "u6")]}
    body = client.post("/v1/exposures", json=batch, headers=sdk).get_json()
    assert body["accepted"] == 1 and [r["index"] for r in body["rejected"]] == [0, 1, 2, 3, 4]
    fields = [r["error"].split(":")[0] for r in body["rejected"]]
    assert fields == ["variant", "phase", "experiment", "count", "first_seen"]
    with services.db.session() as session:
        assert [e.unit_id for e in session.scalars(select(Exposure))] == ["u6"]
    refused = client.post("/v1/exposures", json={"items": []}, headers=sdk)
    assert refused.status_code == 422 and "exposures" in str(refused.get_json())
