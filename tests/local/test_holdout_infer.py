"""/v1/infer for a unit in its layer's holdout: the control's engine serves it, the request row
is not enrolled, and a holdout exposure (not an ordinary one) is committed with it (embedded
engines, SQLite)."""

from __future__ import annotations

from sqlalchemy import select

from abtest.evaluator import bucket
from abtest.models import Exposure, HoldoutExposure, RequestLog
from abtest.services.keys import create_key
from tests.serving.test_infer_e2e import make_app
from tests.conftest import experiment_payload


def test_infer_serves_holdout_units_the_control_and_records_their_holdout_exposure(sqlite_url, tiny_registry) -> None:
    app = make_app(sqlite_url, tiny_registry)
    services = app.extensions["abtest"]
    try:
        with services.db.transaction() as session:
            headers = {"Authorization": f"Bearer {create_key(session, 'holdout', 'admin')}"}
        client = app.test_client()
        assert client.put("/v1/layers/home", json={"holdout": 0.5}, headers=headers).status_code == 200
        variants = [{"key": "control", "engine": "v1-fp32", "weight": 0.0, "control": True},
                    {"key": "treatment", "engine": "v2-int4", "weight": 1.0}]
        client.post("/v1/experiments", json=experiment_payload("h", variants=variants, layer="home"), headers=headers)
        client.post("/v1/experiments/h/start", headers=headers)
        held = next(f"u{i}" for i in range(100) if bucket("holdout:home", f"u{i}") < 0.5)
        served = next(f"u{i}" for i in range(100) if bucket("holdout:home", f"u{i}") >= 0.5)
        body = {"experiment": "h", "prompt": "x = 1", "max_new_tokens": 2}
        first = client.post("/v1/infer", json={**body, "unit_id": held}, headers=headers).get_json()
        other = client.post("/v1/infer", json={**body, "unit_id": served}, headers=headers).get_json()
        assert (first["variant"], first["engine"]) == ("control", "v1-fp32")
        assert (other["variant"], other["engine"]) == ("treatment", "v2-int4")
        with services.db.session() as session:
            holdouts = [(r.unit_id, r.layer, r.count) for r in session.scalars(select(HoldoutExposure))]
            exposures = [r.unit_id for r in session.scalars(select(Exposure))]
            enrolled = {r.unit_id: r.in_experiment for r in session.scalars(select(RequestLog))}
        assert holdouts == [(held, "home", 1)] and exposures == [served]
        assert enrolled == {held: False, served: True}
    finally:
        services.close()
