"""The console's power planner page: the service behind POST /v1/plan, with the same numbers
(statsmodels the independent reference), errors beside their field, a JSON twin, viewer access."""

from __future__ import annotations

import math
import re
from typing import Any

from statsmodels.stats.power import NormalIndPower

from .conftest import token


def _post(client: Any, **fields: str) -> Any:
    data = {"csrf_token": token(client, "/console/plan"), "kind": "binary", "test": "mde", "relative": "y",
            "alpha": "0.05", "power": "0.8", "variants": "2", **fields}
    return client.post("/console/plan", data=data)


def test_the_page_plans_what_statsmodels_plans(console: Any) -> None:
    reply = _post(console, kind="mean", baseline="310", sd="95", effect="0.05", daily_units="400")
    assert reply.status_code == 200
    html = reply.get_data(as_text=True)
    d = 0.05 * 310 / 95  # standardized effect
    reference = math.ceil(NormalIndPower().solve_power(effect_size=d, alpha=0.05, power=0.8, ratio=1.0))
    shown = int(re.search(r"([\d,]+) units per variant", html).group(1).replace(",", ""))
    assert abs(shown - reference) <= 1
    assert f"about <b>{math.ceil(2 * shown / 400)} days</b>" in html


def test_the_json_twin_is_the_apis_plan(console: Any, client: Any, admin: dict[str, str]) -> None:
    fields = {"baseline": "0.1", "effect": "0.2", "daily_units": "5000"}
    page = console.post("/console/plan?format=json", data={
        "csrf_token": token(console, "/console/plan"), "kind": "binary", "test": "mde", "relative": "y",
        "alpha": "0.05", "power": "0.8", "variants": "3", **fields}).get_json()
    api = client.post("/v1/plan", json={"kind": "binary", "baseline": 0.1, "mde": 0.2, "relative": True,
                                        "alpha": 0.05, "power": 0.8, "variants": 3, "daily_units": 5000},
                      headers=admin).get_json()
    assert page["plan"] == api and page["errors"] == {}


def test_a_bad_field_is_shown_beside_it(console: Any) -> None:
    reply = _post(console, baseline="1.5", effect="0.1")
    html = reply.get_data(as_text=True)
    assert reply.status_code == 422
    assert 'data-field="baseline"' in html and "has-error" in html and "must be in (0, 1)" in html
    assert "units per variant" not in html
    reply = _post(console, experiment="no-such", metric="conversion", effect="0.1")
    assert reply.status_code == 404 and "no-such" in reply.get_data(as_text=True)


def test_a_viewer_may_plan(viewer: Any, client: Any, services: Any) -> None:
    assert viewer.get("/console/plan").status_code == 200
    assert _post(viewer, baseline="0.2", effect="0.1").status_code == 200
    from .conftest import new_key

    headers = {"Authorization": f"Bearer {new_key(services, 'viewer', 'api-looker')}"}
    assert client.post("/v1/plan", json={"kind": "binary", "baseline": 0.2, "mde": 0.1},
                       headers=headers).status_code == 200
