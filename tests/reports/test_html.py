"""The HTML report: self-contained, and read by a real headless browser (Debian's chromium).

Under CI (CI=true) a missing chromium fails the browser test; elsewhere it is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from abtest.reports.catalogue import BUILTINS

from .conftest import METRICS

from .factories import populate

CHROMIUM = os.environ.get("ABTEST_CHROMIUM", "/usr/bin/chromium")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _chromium() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not path:
        message = f"chromium not found at {CHROMIUM} (apt-get install -y chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def dump_dom(html_path: Path) -> str:
    """The DOM after chromium parsed and laid out the page (no network: the page needs none)."""
    out = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage", "--dump-dom", html_path.as_uri()],
        capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


class Finder(HTMLParser):
    """Collects ids, classes, data-metric values, tag names and external references."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, dict[str, str | None]] = {}
        self.metric_rows: list[str] = []
        self.forest_rows: list[str] = []
        self.tags: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if a.get("id"):
            self.ids[a["id"]] = {**a, "tag": tag}
        cls = (a.get("class") or "").split()
        if tag == "tr" and "metric-row" in cls:
            self.metric_rows.append(a.get("data-metric") or "")
        if "forest-row" in cls:
            self.forest_rows.append(a.get("data-metric") or "")
        for attr in ("src", "href"):
            if a.get(attr) and not a[attr].startswith(("#", "data:", "http://www.w3.org")):
                self.external.append(a[attr])


def parse(html: str) -> Finder:
    finder = Finder()
    finder.feed(html)
    return finder


def _report_html(client, admin, key: str = "exp-1") -> str:  # type: ignore[no-untyped-def]
    reply = client.get(f"/v1/experiments/{key}/report?format=html", headers=admin)
    assert reply.status_code == 200
    assert reply.mimetype == "text/html"
    return reply.get_data(as_text=True)


def _fill(factory, treatment_share: float, n: int = 600):  # type: ignore[no-untyped-def]
    f = factory("exp-1")
    rng = np.random.default_rng(11)
    units = [(f"u{i}", "treatment" if rng.random() < treatment_share else "control") for i in range(n)]
    populate(f, units, rng, lat_mean={"control": 400, "treatment": 300}, err_p={"control": 0.02, "treatment": 0.02},
             conv_p={"control": 0.1, "treatment": 0.12})
    for i in range(20):
        f.request(f"u{i}", "treatment", 300.0, shadow=True, output_match=True)
    f.flush()
    return f


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_page_is_self_contained_and_complete(factory, client, admin) -> None:  # type: ignore[no-untyped-def]
    _fill(factory, 0.5)
    html = _report_html(client, admin)
    page = parse(html)
    assert page.external == [] and "<script" not in html and "cdn" not in html.lower()
    for ident in ("recommendation", "srm-ok", "forest-plot", "metrics-table", "latency-histogram",
                  "timeseries-plot", "shadow-table", "variants-table"):
        assert ident in page.ids, ident
    assert "srm-banner" not in page.ids
    expected = [m.name for m in BUILTINS] + ["conversion", "revenue", "orders"]
    assert page.metric_rows == expected
    roles = {m["name"]: m.get("role", "secondary") for m in METRICS}
    order = {"primary": 0, "guardrail": 1, "secondary": 2}  # the forest plot leads with the verdict's metrics
    assert page.forest_rows == sorted(expected, key=lambda name: order[roles.get(name, "secondary")])
    assert page.forest_rows[:3] == ["conversion", "latency_p99_ms", "error_rate"]
    assert html.count('class="hist-line"') == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_chromium_renders_the_key_elements(factory, client, admin, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _fill(factory, 0.40)  # a sample ratio mismatch: 40% instead of 50% in treatment
    report = client.get("/v1/experiments/exp-1/report", headers=admin).get_json()
    assert report["srm"]["flagged"] is True
    path = tmp_path / "report.html"
    path.write_text(_report_html(client, admin), encoding="utf-8")
    dom = parse(dump_dom(path))
    rec = dom.ids["recommendation"]
    assert rec["data-action"] == report["recommendation"]["action"] != "ship"
    assert "srm-banner" in dom.ids and dom.ids["srm-banner"]["role"] == "alert"
    assert dom.ids["forest-plot"]["tag"] == "svg"
    assert dom.ids["timeseries-plot"]["tag"] == "svg"
    assert dom.metric_rows == [m["name"] for m in report["metrics"]]
    assert sorted(dom.forest_rows) == sorted(dom.metric_rows) and dom.forest_rows[0] == "conversion"  # primary first
    assert "circle" in dom.tags and "polyline" in dom.tags


def test_empty_experiment_renders_with_explanations(factory, client, admin) -> None:  # type: ignore[no-untyped-def]
    factory("exp-1")
    html = _report_html(client, admin)
    page = parse(html)
    assert page.ids["recommendation"]["data-action"] == "keep running"
    assert re.search(r"no latency data yet", html) and "a variant has no units yet" in html
    assert len(page.metric_rows) == len(BUILTINS) + 3


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_headline_verdict_interval_legends_and_times(factory, client, admin) -> None:  # type: ignore[no-untyped-def]
    _fill(factory, 0.5)
    report = client.get("/v1/experiments/exp-1/report", headers=admin).get_json()
    html = _report_html(client, admin)
    from html import escape

    assert f'<p id="headline" class="headline">{escape(report["headline"])}</p>' in html
    # the primary's row shows the interval the verdict used, labelled with its scale
    row = re.search(r'<tr class="metric-row" data-metric="conversion">(.*?)</tr>', html).group(1)
    assert 'data-scale="absolute"' in row and "always-valid, absolute" in row
    assert re.search(r"conversions \d+ / \d+ units", row)
    # legends: coloured swatches, the same colour for a variant on every chart
    hist = re.search(r'<svg id="latency-histogram".*?</svg>', html).group(0)
    series = re.search(r'<svg id="timeseries-plot".*?</svg>', html).group(0)
    swatch = dict(re.findall(r'<rect class="swatch"[^>]*fill="(#[0-9a-f]{6})"/><text[^>]*>([^<]+)</text>', hist)[i][::-1]
                  for i in range(2))
    lines = dict(re.findall(r'data-variant="([^"]+)" points="[^"]*" fill="none" stroke="(#[0-9a-f]{6})"', hist))
    assert set(swatch) == {"control", "treatment"} and swatch == lines
    assert re.search(rf'stroke="{swatch["treatment"]}"[^>]*/><text[^>]*>treatment vs control</text>', series)
    assert 'class="swatch"' in re.search(r'<svg id="forest-plot".*?</svg>', html).group(0)
    # human times, no microseconds
    assert re.search(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC<", html)
    assert re.search(r"started \d{4}-\d\d-\d\d \d\d:\d\d UTC ·", html)


def test_the_forest_plot_axis_stops_at_100_percent_and_marks_what_lies_beyond() -> None:
    from abtest.reports.svg import forest_plot

    row = {"metric": "m", "label": "m", "higher_is_better": True, "significant": True, "error": None}
    svg = forest_plot([{**row, "metric": "tokens_per_s", "estimate": 4.46, "ci_lower": 4.2, "ci_upper": 4.6,
                        "seq_lower": 4.0, "seq_upper": 4.8},
                       {**row, "metric": "conversion", "estimate": 0.02, "ci_lower": -0.1, "ci_upper": 0.14,
                        "seq_lower": -0.2, "seq_upper": 0.23, "significant": False}])
    assert svg.count('class="beyond"') == 1 and "+446.0%" in svg  # the label keeps the exact estimate
    assert "+400" not in svg  # no tick beyond the clip: the axis ends near +100 %
    narrow = forest_plot([{**row, "estimate": 0.3, "ci_lower": 0.1, "ci_upper": 0.5, "seq_lower": 0.0,
                           "seq_upper": 0.6}])
    assert 'class="beyond"' not in narrow
