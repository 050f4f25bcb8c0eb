"""/v1/infer on a sticky experiment stores the unit's assignment with its exposure, and a later
weight change serves the same engine to that unit (embedded engines, SQLite)."""

from __future__ import annotations

from sqlalchemy import select

from abtest.models import StickyAssignment
from abtest.services.keys import create_key
from tests.serving.test_infer_e2e import make_app
from tests.conftest import experiment_payload


def test_infer_stores_and_honours_sticky_assignments(sqlite_url, tiny_registry) -> None:
    app = make_app(sqlite_url, tiny_registry)
    services = app.extensions["abtest"]
    try:
        with services.db.transaction() as session:
            headers = {"Authorization": f"Bearer {create_key(session, 'sticky', 'admin')}"}
        client = app.test_client()
        variants = [{"key": "control", "engine": "v1-fp32", "weight": 0.0, "control": True},
                    {"key": "treatment", "engine": "v2-int4", "weight": 1.0}]
        client.post("/v1/experiments", json=experiment_payload("st", variants=variants, sticky=True), headers=headers)
        client.post("/v1/experiments/st/start", headers=headers)
        body = {"experiment": "st", "unit_id": "u1", "prompt": "x = 1", "max_new_tokens": 2}
        first = client.post("/v1/infer", json=body, headers=headers).get_json()
        assert first["variant"] == "treatment"
        with services.db.session() as session:
            rows = [(r.unit_id, r.variant, r.phase) for r in session.scalars(select(StickyAssignment))]
        assert rows == [("u1", "treatment", 1)]
        flipped = [{**variants[0], "weight": 1.0}, {**variants[1], "weight": 0.0}]
        client.patch("/v1/experiments/st", json={"variants": flipped}, headers=headers)
        again = client.post("/v1/infer", json=body, headers=headers).get_json()
        other = client.post("/v1/infer", json={**body, "unit_id": "u2"}, headers=headers).get_json()
        assert (again["variant"], again["engine"]) == ("treatment", "v2-int4")
        assert other["variant"] == "control"  # a new unit follows the new weights
    finally:
        services.close()
