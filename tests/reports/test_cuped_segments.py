"""CUPED and segment breakdowns in the report, against the same statistics computed in Python
from the rows the test inserted (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from abtest.stats import CupedMeanStats, MeanStats, cuped_adjust, heterogeneity_test, srm_test, welch_test

from .factories import T0

METRICS = [{"name": "revenue", "event": "purchase", "kind": "sum", "role": "primary"},
           {"name": "conversion", "event": "purchase", "kind": "binary"}]
DIMS = [{"attribute": "country", "levels": ["US", "DE"]}]
DAY = timedelta(days=1)


def _populate(f, rng, n=240):  # type: ignore[no-untyped-def]
    """Units with a pre-period spend (most of them) and a correlated post-period spend."""
    units = []
    for i in range(n):
        variant = "treatment" if i % 2 else "control"
        country = ("US", "DE", "FR")[i % 3]
        f.exposure(f"u{i}", variant, T0, segments={"country": country if country != "FR" else "other"})
        base = rng.gamma(2.0, 10.0)
        pre = base + rng.normal(0, 3) if i % 5 else None  # every 5th unit has no history
        if pre is not None:
            f.event(f"u{i}", "purchase", T0 - 3 * DAY, max(pre, 0.1))
        f.event(f"u{i}", "purchase", T0 - 40 * DAY, 500.0)  # outside the 14-day lookback
        post = base + rng.normal(2.0 if variant == "treatment" else 0.0, 3)
        f.event(f"u{i}", "purchase", T0 + timedelta(hours=2), max(post, 0.1))
        units.append((variant, country, None if pre is None else max(pre, 0.1), max(post, 0.1)))
    f.flush()
    return units


def _expected_cuped(units, control="control", treatment="treatment"):  # type: ignore[no-untyped-def]
    with_h = [u for u in units if u[2] is not None]
    xbar = np.mean([u[2] for u in with_h])
    arms = {}
    for v in (control, treatment):
        ys = [u[3] for u in units if u[0] == v]
        xs = [u[2] if u[2] is not None else xbar for u in units if u[0] == v]
        arms[v] = CupedMeanStats.from_values(ys, xs)
    return welch_test(*cuped_adjust(arms[control], arms[treatment])), arms


def test_cuped_adjusts_event_metrics_with_imputed_history(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory(metrics=METRICS, dimensions=DIMS)
    units = _populate(f, np.random.default_rng(4))
    report = report_of()
    revenue = next(m for m in report["metrics"] if m["name"] == "revenue")
    expected, arms = _expected_cuped(units)
    got = revenue["comparisons"][0]
    assert got["absolute"]["estimate"] == pytest.approx(expected.absolute.estimate, rel=1e-9)
    assert got["absolute"]["ci_lower"] == pytest.approx(expected.absolute.ci_lower, rel=1e-9)
    assert got["relative"]["estimate"] == pytest.approx(expected.relative.estimate, rel=1e-9)
    assert got["p_value"] == pytest.approx(expected.absolute.p_value, rel=1e-6, abs=1e-12)
    plain = welch_test(arms["control"].post, arms["treatment"].post)
    cuped = revenue["cuped"]
    assert cuped["units_with_history"] == sum(u[2] is not None for u in units)
    assert cuped["units"] == len(units) and cuped["lookback_days"] == 14
    reduction = 1 - (expected.absolute.se / plain.absolute.se) ** 2
    assert cuped["adjustments"][0]["variance_reduction"] == pytest.approx(reduction, rel=1e-9)
    assert reduction > 0.3  # the pre-period spend explains much of the post-period spend
    # per-variant estimates stay the plain means
    assert revenue["variants"]["control"]["estimate"] == pytest.approx(arms["control"].post.mean, rel=1e-9)


def test_cuped_off_leaves_metrics_unadjusted(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory(metrics=METRICS, cuped={"enabled": False})
    units = _populate(f, np.random.default_rng(5))
    revenue = next(m for m in report_of()["metrics"] if m["name"] == "revenue")
    assert "cuped" not in revenue
    plain = welch_test(MeanStats.from_values([u[3] for u in units if u[0] == "control"]),
                       MeanStats.from_values([u[3] for u in units if u[0] == "treatment"]))
    assert revenue["comparisons"][0]["absolute"]["estimate"] == pytest.approx(plain.absolute.estimate, rel=1e-9)
    assert revenue["comparisons"][0]["absolute"]["se"] == pytest.approx(plain.absolute.se, rel=1e-9)


def test_segment_breakdown_tests_srm_bh_and_interaction(factory, report_of) -> None:  # type: ignore[no-untyped-def]
    f = factory(metrics=METRICS, dimensions=DIMS)
    units = _populate(f, np.random.default_rng(6))
    report = report_of()
    (section,) = report["segments"]
    assert section["dimension"] == "country" and section["adjustment"] == "bh"
    assert [lv["level"] for lv in section["levels"]] == ["US", "DE", "other"]
    level_of = {"US": "US", "DE": "DE", "FR": "other"}
    raw_p, got_q, effects = [], [], []
    for lv in section["levels"]:
        mine = [u for u in units if level_of[u[1]] == lv["level"]]
        counts = [sum(u[0] == v for u in mine) for v in ("control", "treatment")]
        assert lv["units"] == {"control": counts[0], "treatment": counts[1]}
        assert lv["srm_p_value"] == pytest.approx(srm_test(counts, [0.5, 0.5]).p_value, rel=1e-9)
        for comp in lv["comparisons"]:
            if comp["metric"] != "revenue":
                raw_p.append(comp["p_value"]), got_q.append(comp["adjusted_p_value"])
                continue
            ref = welch_test(MeanStats.from_values([u[3] for u in mine if u[0] == "control"]),
                             MeanStats.from_values([u[3] for u in mine if u[0] == "treatment"]))
            assert comp["absolute"] == pytest.approx(ref.absolute.estimate, rel=1e-9)
            assert comp["p_value"] == pytest.approx(ref.absolute.p_value, rel=1e-6)
            raw_p.append(comp["p_value"]), got_q.append(comp["adjusted_p_value"])
            effects.append((ref.absolute.estimate, ref.absolute.se))
    # BH over every segment comparison of the report (built-in ratio metrics have no requests here)
    defined = [(p, q) for p, q in zip(raw_p, got_q) if p is not None]
    bh = multipletests([p for p, _ in defined], method="fdr_bh")[1]
    assert [q for _, q in defined] == pytest.approx(list(bh), rel=1e-9)
    inter = next(i for i in section["interactions"] if i["metric"] == "revenue")
    ref_q = heterogeneity_test(effects)
    assert inter["q"] == pytest.approx(ref_q.q, rel=1e-9) and inter["df"] == 2


def test_html_report_shows_the_segment_and_cuped_tables(factory, services, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from abtest.reports import ReportOptions, build_report
    from abtest.reports.html import render_html

    f = factory(metrics=METRICS, dimensions=DIMS)
    _populate(f, np.random.default_rng(7))
    with services.db.session() as session:
        page = render_html(build_report(session, "exp-1", ReportOptions(histogram=True)))
    (tmp_path / "report.html").write_text(page, encoding="utf-8")
    table = page[page.index('id="segments-country"'):]
    table = table[:table.index("</table>")]
    # header, then revenue in 3 levels (every unit converts: conversion has no variance to test)
    assert table.count("<tr>") == 1 + 3
    assert 'id="cuped-table"' in page and "Interaction" in page
