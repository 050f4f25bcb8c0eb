"""Attribution of events to an experiment's metrics, on hand-made rows with known answers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from .factories import T0

METRICS = [
    {"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary"},
    {"name": "purchases", "event": "purchase", "kind": "count"},
    {"name": "revenue", "event": "purchase", "kind": "sum"},
]
H = timedelta(hours=1)


@pytest.fixture
def attributed(factory):  # type: ignore[no-untyped-def]
    f = factory("exp-1", metrics=METRICS)
    for unit, variant in (("a", "control"), ("a2", "control"), ("b", "treatment"), ("c", "treatment")):
        f.exposure(unit, variant, T0)
    old = f.request("a", "control", 100.0, at=T0 + H, phase=0)  # an older phase's request
    r_b = f.request("b", "treatment", 100.0, at=T0 + H)
    r_c_late = f.request("c", "treatment", 100.0, at=T0 + 30 * H)
    r_c_early = f.request("c", "treatment", 100.0, at=T0 + 2 * H)
    f.request("a", "control", 100.0, at=T0 + H)
    f.event("a", "purchase", T0 - timedelta(minutes=1), 100.0)        # before exposure: no
    f.event("a", "purchase", T0 + 25 * H, 100.0)                      # after the 24 h window: no
    f.event("a", "purchase", T0 + H, 100.0, request_id=old)           # names an older phase: no
    f.event("a", "purchase", T0 + H, 100.0, experiment_key="other")   # names another experiment: no
    f.event("a", "signup", T0 + H, 100.0)                             # another event name: no
    f.event("stranger", "purchase", T0 + H, 100.0)                    # never exposed: kept, counts nowhere
    f.event("b", "purchase", T0 + H, 3.0)                             # plain, inside the window: yes
    f.event("anonymous", "purchase", T0 + 2 * H, 4.0, request_id=r_b)  # tied to b's request: yes, for b
    f.event("c", "purchase", T0 + 31 * H, 5.0, request_id=r_c_late)   # window starts at the request: yes
    f.event("c", "purchase", T0 + 27 * H, 100.0, request_id=r_c_early)  # 25 h after its request: no
    f.event("c", "purchase", T0 + 24 * H, 7.0, experiment_key="exp-1")  # exactly at the window's end: yes
    f.flush()
    return f


def _variants(report, name):  # type: ignore[no-untyped-def]
    m = next(m for m in report["metrics"] if m["name"] == name)
    return {v: (x["units"], x["estimate"]) for v, x in m["variants"].items()}


def test_attribution_rule(attributed, report_of) -> None:  # type: ignore[no-untyped-def]
    report = report_of()
    # per unit: a 0, a2 0 | b: 2 events (3 + 4), c: 2 events (5 + 7)
    assert _variants(report, "conversion") == {"control": (2, 0.0), "treatment": (2, 1.0)}
    assert _variants(report, "purchases") == {"control": (2, 0.0), "treatment": (2, 2.0)}
    assert _variants(report, "revenue") == {"control": (2, 0.0), "treatment": (2, pytest.approx(9.5))}


def test_zero_baseline_and_zero_variance_are_explained(attributed, report_of) -> None:  # type: ignore[no-untyped-def]
    report = report_of()
    conv = next(m for m in report["metrics"] if m["name"] == "conversion")["comparisons"][0]
    assert conv["error"] == "both variants have zero variance; no test is possible"
    rev = next(m for m in report["metrics"] if m["name"] == "revenue")["comparisons"][0]
    assert rev["absolute"]["estimate"] == pytest.approx(9.5)
    assert rev["relative"] is None and rev["relative_error"] == "the control mean is zero; a relative lift is undefined"
