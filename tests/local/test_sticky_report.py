"""The report of a sticky experiment after a ramp checks SRM against the shares actually
expected: only units assigned in the phase follow its weights; units kept from the earlier
phase follow theirs."""

from __future__ import annotations

from abtest.client import definitions as defs
from abtest.evaluator import assign
from abtest.stats import srm_test


def _variants(treatment: float) -> list[dict]:
    return [{"key": "control", "engine": "v1-fp32", "weight": 1 - treatment, "control": True},
            {"key": "treatment", "engine": "v2-int4", "weight": treatment}]


def _exposures(client, sdk, config, units, *, fresh, carried=None):  # type: ignore[no-untyped-def]
    items = []
    for unit in units:
        variant = carried[unit] if carried else assign(config, unit).variant
        items.append({"exposure_id": f"{config.phase}-{unit}", "experiment": config.key, "phase": config.phase,
                      "unit_id": unit, "variant": variant, "first_seen": "2026-01-01T00:00:00Z",
                      "last_seen": "2026-01-01T00:00:00Z", "sticky": fresh})
    for start in range(0, len(items), 200):  # the test app takes bodies up to 64 KiB
        reply = client.post("/v1/exposures", json={"exposures": items[start:start + 200]}, headers=sdk)
        assert reply.get_json()["rejected"] == []
    return {i["unit_id"]: i["variant"] for i in items}


def _config(client, sdk):  # type: ignore[no-untyped-def]
    return defs.parse(client.get("/v1/sdk/definitions", headers=sdk).get_json())[1]["ramp"]


def test_srm_after_a_sticky_ramp_counts_only_the_phases_own_units(client, admin, sdk, make_experiment) -> None:
    make_experiment("ramp", start=True, sticky=True, variants=_variants(0.1))
    old = [f"old-{i}" for i in range(3000)]
    kept = _exposures(client, sdk, _config(client, sdk), old, fresh=True)
    client.patch("/v1/experiments/ramp", json={"variants": _variants(0.5)}, headers=admin)
    phase2 = _config(client, sdk)
    assert phase2.phase == 2
    _exposures(client, sdk, phase2, old, fresh=False, carried=kept)  # they come back, keep their variant
    new = _exposures(client, sdk, phase2, [f"new-{i}" for i in range(3000)], fresh=True)

    srm = client.get("/v1/experiments/ramp/report", headers=admin).get_json()["srm"]
    counts = {v["variant"]: v["units"] for v in srm["variants"]}
    assert counts == {k: sum(v == k for v in new.values()) for k in ("control", "treatment")}
    assert srm["flagged"] is False
    # what the check would say if it tested every phase-2 unit against the phase-2 weights
    everyone = [sum(v == k for v in {**kept, **new}.values()) for k in ("control", "treatment")]
    assert srm_test(everyone, [0.5, 0.5]).flagged
