"""The SDK's local evaluation and the server's evaluator agree: 1,000,000 random (experiment,
unit, attributes) cases, across coverage, every targeting operator, layers and their holdouts,
forced units, paused treatments, phases and sticky variants. The server side is the config the server
assigns from (read from the database by its config cache); the SDK side is the same
experiment as the SDK reads it from ``GET /v1/sdk/definitions``. A sample also goes through
``POST /v1/assign`` and a locally evaluating client end to end."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import httpx
import pytest

from abtest.client import Client
from abtest.client import definitions as defs
from abtest.client.sticky import InMemoryStickyStore
from abtest.evaluator import TARGETING_OPERATORS, assign
from tests.conftest import experiment_payload

CASES = 1_000_000
# The layers' holdout shares (layer-3 has none), set before any of their experiments starts.
HOLDOUTS = {"layer-0": 0.3, "layer-1": 0.5, "layer-2": 0.05}
COUNTRIES = ["US", "CA", "FR", "DE", "JP"]
VERSIONS = ["1.0.0", "1.2", "2.0.1", "v2.3.0", "10.0", "bad"]


def _rule(rng: random.Random) -> dict[str, Any]:
    op = rng.choice(sorted(TARGETING_OPERATORS))
    if op in ("in", "not_in"):
        return {"attribute": "country", "op": op, "value": rng.sample(COUNTRIES, rng.randint(1, 3))}
    if op.startswith("semver_"):
        return {"attribute": "app", "op": op, "value": rng.choice(VERSIONS[:-1])}
    if op in ("eq", "neq"):
        return {"attribute": rng.choice(["country", "plan"]), "op": op,
                "value": rng.choice(COUNTRIES + ["pro", "free"])}
    return {"attribute": "age", "op": op, "value": rng.choice([18, 30, 45.5, 65])}


def _attributes(rng: random.Random) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if rng.random() < 0.9:
        attrs["country"] = rng.choice(COUNTRIES)
    if rng.random() < 0.8:
        attrs["app"] = rng.choice(VERSIONS)
    if rng.random() < 0.8:
        attrs["age"] = rng.choice([rng.randint(10, 80), "40", None, True])
    if rng.random() < 0.5:
        attrs["plan"] = rng.choice(["pro", "free"])
    return attrs


def _holdouts(client: Any, admin: dict[str, str]) -> None:
    for layer, share in HOLDOUTS.items():
        assert client.put(f"/v1/layers/{layer}", json={"holdout": share}, headers=admin).status_code == 200


def _make(client: Any, admin: dict[str, str], rng: random.Random, i: int) -> str:
    key = f"exp-{i}"
    n = rng.randint(2, 4)
    weights = [rng.random() + 0.05 for _ in range(n)]
    variants = [{"key": f"v{j}", "engine": rng.choice(["v1-fp32", "v2-int4"]), "weight": w / sum(weights),
                 "control": j == 0, "shadow": j > 0 and rng.random() < 0.1} for j, w in enumerate(weights)]
    extra: dict[str, Any] = {"coverage": rng.choice([1.0, 0.5, rng.random()]), "variants": variants,
                             "targeting": [_rule(rng) for _ in range(rng.choice([0, 0, 1, 2, 3]))],
                             "forced": {f"u{rng.randrange(5000)}": f"v{rng.randrange(n)}" for _ in range(5)},
                             "sticky": rng.random() < 0.3}
    if i % 3 == 0:
        extra.update(layer=f"layer-{i % 4}", layer_share=rng.choice([0.1, 0.2]))
    assert client.post("/v1/experiments", json=experiment_payload(key, **extra), headers=admin).status_code == 201
    if rng.random() < 0.85:
        assert client.post(f"/v1/experiments/{key}/start", headers=admin).status_code == 200
        if rng.random() < 0.3:  # a weight change: a new phase
            variants = [{**v, "weight": 1.0 / n} for v in variants]
            assert client.patch(f"/v1/experiments/{key}", json={"variants": variants}, headers=admin).status_code == 200
        if rng.random() < 0.15:
            client.patch(f"/v1/experiments/{key}", json={"treatment_paused": True}, headers=admin)
        if rng.random() < 0.1:
            client.post(f"/v1/experiments/{key}/pause", headers=admin)
    return key


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_million_cases_agree_between_the_sdk_and_the_server(app, client, admin, sdk, services) -> None:
    rng = random.Random(20261201)
    _holdouts(client, admin)
    keys = [_make(client, admin, rng, i) for i in range(48)]
    reply = client.get("/v1/sdk/definitions", headers=sdk)
    _, local = defs.parse(reply.get_json())
    server = {k: services.configs.get(k) for k in keys}
    assert set(local) == set(keys)
    assert {c.layer: c.holdout for c in server.values() if c.holdout} == HOLDOUTS  # the server's own shares
    forced = {k: sorted(c.forced) for k, c in server.items()}

    reasons: Counter[str] = Counter()
    mismatches = []
    for n in range(CASES):
        key = keys[n % len(keys)]
        unit = f"u{rng.randrange(5000)}" if n % 7 else rng.choice(forced[key])
        attrs = _attributes(rng)
        sticky = f"v{rng.randrange(4)}" if n % 5 == 0 else None  # a stored variant (or a stale one)
        theirs = assign(server[key], unit, attrs, sticky)
        mine = assign(local[key], unit, attrs, sticky)
        if mine != theirs:
            mismatches.append((key, unit, attrs, sticky, mine, theirs))
        reasons[theirs.reason] += 1
    print(f"agreement: {CASES} cases, {len(mismatches)} mismatches, reasons {dict(reasons)}")
    assert mismatches == []
    # every path of the evaluator was exercised, each many times
    assert set(reasons) == {"assigned", "sticky", "forced", "not_running", "targeting", "layer", "coverage",
                            "holdout", "treatment_paused"}
    assert min(reasons.values()) > 1000


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_http_path_and_a_local_client_agree_end_to_end(app, client, admin, sdk, services) -> None:
    rng = random.Random(7)
    _holdouts(client, admin)
    keys = [_make(client, admin, rng, i) for i in range(24)]
    with Client("http://testserver", sdk["Authorization"].split()[1], transport=httpx.WSGITransport(app=app),
                evaluation="local", refresh_interval=3600, sticky_store=InMemoryStickyStore()) as local:
        reasons: Counter[str] = Counter()
        for n in range(1500):  # few units: many come back, so sticky experiments answer "sticky"
            key, unit, attrs = keys[n % len(keys)], f"u{rng.randrange(150)}", _attributes(rng)
            body = {"experiment": key, "unit_id": unit, "attributes": attrs}
            remote = client.post("/v1/assign", json=body, headers=sdk).get_json()
            assert local.assign(key, unit, attrs).raw == remote, body
            reasons[remote["reason"]] += 1
    assert reasons["sticky"] > 0 and reasons["assigned"] > 0 and reasons["holdout"] > 0
