"""CUPED options and segment dimensions in experiment payloads: bad input is a 422 naming the
field with nothing written; good input round-trips; /v1/assign stores the unit's levels."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from abtest.models import AuditEntry, Experiment, Exposure, Metric, Variant
from tests.conftest import experiment_payload

COUNTRY = {"attribute": "country", "levels": ["US", "DE"]}


def rows(services: Any) -> tuple[int, ...]:
    with services.db.session() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (Experiment, Variant, Metric, AuditEntry))


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("lookback-negative", experiment_payload(cuped={"lookback_days": -1}), "cuped.lookback_days"),
    ("lookback-over-a-year", experiment_payload(cuped={"lookback_days": 366}), "cuped.lookback_days"),
    ("lookback-fraction", experiment_payload(cuped={"lookback_days": 2.5}), "cuped.lookback_days"),
    ("cuped-unknown-field", experiment_payload(cuped={"lookbak_days": 3}), "cuped.lookbak_days"),
    ("unknown-attribute", experiment_payload(dimensions=[{"attribute": "shoe_size", "levels": ["42"]}]),
     "dimensions[0].attribute"),
    ("too-many-levels", experiment_payload(dimensions=[{"attribute": "country",
                                                         "levels": [f"C{i}" for i in range(21)]}]),
     "dimensions[0].levels"),
    ("no-levels", experiment_payload(dimensions=[{"attribute": "country", "levels": []}]), "dimensions[0].levels"),
    ("other-as-level", experiment_payload(dimensions=[{"attribute": "country", "levels": ["other"]}]),
     "dimensions[0].levels[0]"),
    ("duplicate-levels", experiment_payload(dimensions=[{"attribute": "country", "levels": ["US", "US"]}]),
     "dimensions[0].levels"),
    ("duplicate-dimension", experiment_payload(dimensions=[COUNTRY, COUNTRY]), "dimensions[1].attribute"),
]


@pytest.mark.parametrize("payload,field", [pytest.param(p, f, id=name) for name, p, f in BAD])
def test_bad_input_is_422_naming_the_field_and_writes_nothing(client, admin, services, payload, field) -> None:
    before = rows(services)
    reply = client.post("/v1/experiments", json=payload, headers=admin)
    assert reply.status_code == 422, reply.get_json()
    assert reply.get_json()["error"]["details"]["field"] == field
    assert rows(services) == before


def test_patch_with_a_bad_lookback_changes_nothing(client, admin, make_experiment) -> None:
    make_experiment("exp-1")
    before = client.get("/v1/experiments/exp-1", headers=admin).get_json()
    reply = client.patch("/v1/experiments/exp-1", json={"cuped": {"lookback_days": 400}}, headers=admin)
    assert reply.status_code == 422 and reply.get_json()["error"]["details"]["field"] == "cuped.lookback_days"
    assert client.get("/v1/experiments/exp-1", headers=admin).get_json() == before


def test_options_round_trip_and_assign_stores_levels(client, admin, services, sdk) -> None:
    payload = experiment_payload(cuped={"enabled": False, "lookback_days": 30}, dimensions=[
        COUNTRY, {"attribute": "plan", "levels": ["pro"]}], targeting=[])
    created = client.post("/v1/experiments", json=payload, headers=admin).get_json()
    assert created["cuped"] == {"enabled": False, "lookback_days": 30}
    assert created["dimensions"] == [COUNTRY, {"attribute": "plan", "levels": ["pro"]}]
    assert client.post("/v1/experiments/exp-1/start", headers=admin).status_code == 200
    for unit, attrs in (("u1", {"country": "US", "plan": "pro"}), ("u2", {"country": "FR"}), ("u3", {})):
        reply = client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": unit, "attributes": attrs},
                            headers=sdk)
        assert reply.status_code == 200, reply.get_json()
    with services.db.session() as s:
        levels = dict(s.execute(select(Exposure.unit_id, Exposure.segments)).all())
    assert levels == {"u1": {"country": "US", "plan": "pro"}, "u2": {"country": "other", "plan": "other"},
                      "u3": {"country": "other", "plan": "other"}}
