"""Each console page renders from the services' data and has a JSON twin (?format=json); the
lifecycle buttons go through a confirm step; a viewer key looks and changes nothing."""

from __future__ import annotations

import uuid
from html.parser import HTMLParser
from datetime import datetime, timedelta, timezone
from typing import Any

from abtest.models import RequestLog
from abtest.services.experiments import get_experiment, pause_treatment

from .conftest import new_key, sign_in, token


def _traffic(client: Any, headers: dict[str, str], units: int) -> None:
    for i in range(units):
        reply = client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": f"u{i}"}, headers=headers)
        assert reply.status_code == 200


def test_the_list_shows_status_variants_units_badge_and_last_change(console, make_experiment, client, sdk) -> None:
    make_experiment("exp-1", start=True)
    make_experiment("exp-2")
    _traffic(client, sdk, 12)
    data = console.get("/console/?format=json").get_json()
    rows = {e["key"]: e for e in data["experiments"]}
    assert rows["exp-1"]["status"] == "running" and rows["exp-1"]["units"] == 12
    assert [v["engine"] for v in rows["exp-1"]["variants"]] == ["v1-fp32", "v2-int4"]
    assert rows["exp-1"]["recommendation"]["action"]  # from the typed report
    report = client.get("/v1/experiments/exp-1/report", headers=_admin(console, client)).get_json()
    assert rows["exp-1"]["recommendation"] == {"action": report["recommendation"]["action"],
                                               "headline": report["headline"]}
    assert rows["exp-1"]["last_change"]["action"] == "start"
    assert rows["exp-2"]["recommendation"] is None and rows["exp-2"]["units"] == 0
    html = console.get("/console/").get_data(as_text=True)
    assert 'data-key="exp-1"' in html and 'data-key="exp-2"' in html and "v2-int4" in html
    assert [e["key"] for e in console.get("/console/?status=draft&format=json").get_json()["experiments"]] == ["exp-2"]
    assert console.get("/console/?status=bogus&format=json").status_code == 422


def _admin(console: Any, client: Any) -> dict[str, str]:
    services = client.application.extensions["abtest"]
    return {"Authorization": f"Bearer {new_key(services, 'admin', 'reader')}"}


def test_the_experiment_page_embeds_the_report_audit_exports_and_snippets(console, make_experiment, client, sdk) -> None:
    make_experiment("exp-1", start=True)
    _traffic(client, sdk, 5)
    html = console.get("/console/experiments/exp-1").get_data(as_text=True)
    for part in ('id="live-report"', 'id="recommendation"', 'id="metrics-table"', 'id="audit-log"',
                 'data-action="start"', 'id="action-pause"', 'id="action-stop"', 'id="snippet-sdk"'):
        assert part in html, part
    assert 'id="action-start"' not in html  # running: the service would refuse a start
    assert 'Client(&#34;http://localhost/&#34;' in html or 'Client(&#34;http://localhost&#34;' in html
    assert 'model=&#34;exp-1&#34;' in html
    data = console.get("/console/experiments/exp-1?format=json").get_json()
    assert data["actions"] == ["pause", "stop"] and data["experiment"]["key"] == "exp-1"
    assert data["report"]["experiment"]["key"] == "exp-1" and [a["action"] for a in data["audit"]] == ["start", "create"]
    assert data["fragment"] == "/console/experiments/exp-1/report-fragment"
    assert console.get("/console/experiments/exp-1?format=json&alpha=0.1&phase=1").get_json()["fragment"] == (
        "/console/experiments/exp-1/report-fragment?alpha=0.1&phase=1")  # the refresh keeps the options
    fragment = console.get("/console/experiments/exp-1/report-fragment")
    assert fragment.status_code == 200 and 'id="recommendation"' in fragment.get_data(as_text=True)
    assert "<html" not in fragment.get_data(as_text=True)
    exports = data["exports"]
    report_csv = console.get(exports["report.csv"])
    assert report_csv.status_code == 200 and report_csv.mimetype == "text/csv"
    assert console.get(exports["report.json"]).get_json()["experiment"]["key"] == "exp-1"
    exposures = console.get(exports["exposures.csv"]).get_data(as_text=True).splitlines()
    assert len(exposures) == 1 + 5  # a header and one row per unit
    css = console.get("/console/report.css").get_data(as_text=True)
    assert css and all(line.startswith("#live-report ") for line in css.splitlines() if line)


def test_pages_are_served_with_a_strict_policy_and_assets_from_the_app(console, make_experiment) -> None:
    make_experiment("exp-1")
    for path in ("/console/", "/console/experiments/exp-1", "/console/new", "/console/engines", "/console/keys"):
        reply = console.get(path)
        assert reply.status_code == 200, path
        policy = reply.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        html = reply.get_data(as_text=True)
        assert "http://" not in html.split("<main")[0] and "https://" not in html.split("<main")[0]
    assert console.get("/console/static/console.css").status_code == 200
    assert console.get("/console/static/console.js").status_code == 200


def test_lifecycle_buttons_confirm_first_then_act(console, make_experiment, client, admin, services) -> None:
    make_experiment("exp-1")
    page = console.get("/console/experiments/exp-1/start")
    assert page.status_code == 200 and 'id="confirm-button"' in page.get_data(as_text=True)
    assert client.get("/v1/experiments/exp-1", headers=admin).get_json()["status"] == "draft"  # a GET changes nothing
    csrf = token(console, "/console/experiments/exp-1/start")
    assert console.post("/console/experiments/exp-1/start", data={"csrf_token": csrf}).status_code == 302
    assert client.get("/v1/experiments/exp-1", headers=admin).get_json()["status"] == "running"
    reply = console.post("/console/experiments/exp-1/start", data={"csrf_token": csrf})
    assert reply.status_code == 409  # the service's transition table refuses it
    with services.db.transaction() as session:
        assert pause_treatment(session, get_experiment(session, "exp-1", for_update=True), "guardrail", "p99 up")
    assert "resume_treatment" in console.get("/console/experiments/exp-1?format=json").get_json()["actions"]
    reply = console.post("/console/experiments/exp-1/resume_treatment",
                         data={"csrf_token": csrf, "reason": "a slow node, replaced"})
    assert reply.status_code == 302
    view = client.get("/v1/experiments/exp-1", headers=admin).get_json()
    assert view["treatment_paused"] is False
    audit = client.get("/v1/experiments/exp-1/audit", headers=admin).get_json()["entries"]
    assert audit[-1]["action"] == "resume_treatment" and audit[-1]["actor"] == "ops"
    assert audit[-1]["changes"]["reason"] == "a slow node, replaced"
    for action in ("pause", "stop"):
        assert console.post(f"/console/experiments/exp-1/{action}", data={"csrf_token": csrf}).status_code == 302
    assert client.get("/v1/experiments/exp-1", headers=admin).get_json()["status"] == "stopped"
    assert console.get("/console/experiments/exp-1/edit").status_code == 409


def test_the_engines_page_counts_the_last_hour(console, services) -> None:
    now = datetime.now(timezone.utc)
    rows = [("ok", 10.0, now), ("ok", 30.0, now), ("error", 5.0, now), ("ok", 99.0, now - timedelta(hours=2))]
    with services.db.transaction() as session:
        for status, latency, at in rows:
            session.add(RequestLog(request_id=str(uuid.uuid4()), engine="v1-fp32", unit_id="u", status=status,
                                   started_at=at, finished_at=at, latency_ms=latency))
    data = console.get("/console/engines?format=json").get_json()
    engines = {e["name"]: e for e in data["engines"]}
    assert set(engines) >= {"v1-fp32", "v2-int4"} and data["mode"] == "embedded"
    hour = engines["v1-fp32"]["last_hour"]
    assert (hour["requests"], hour["ok"], hour["errors"]) == (3, 2, 1)
    assert hour["latency_mean_ms"] == 20.0 and hour["latency_max_ms"] == 30.0
    assert engines["v2-int4"]["last_hour"] is None and engines["v1-fp32"]["queue_depth"] == 0
    assert 'data-engine="v1-fp32"' in console.get("/console/engines").get_data(as_text=True)


def test_keys_are_shown_once_listed_without_the_key_and_revoked(console, client, services) -> None:
    csrf = token(console, "/console/keys")
    reply = console.post("/console/keys", data={"csrf_token": csrf, "name": "dashboards", "scope": "viewer"})
    html = reply.get_data(as_text=True)
    assert reply.status_code == 200 and 'id="created-key"' in html
    key = html.split('id="new-key" readonly value="')[1].split('"')[0]
    assert key.startswith("abt_")
    bearer = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/experiments", headers=bearer).status_code == 200
    listed = console.get("/console/keys").get_data(as_text=True)
    assert key not in listed and "dashboards" in listed
    keys = {k["name"]: k for k in console.get("/console/keys?format=json").get_json()["keys"]}
    assert keys["dashboards"]["scope"] == "viewer" and keys["ops"]["you"] is True
    assert key not in str(keys)
    bad = console.post("/console/keys", data={"csrf_token": csrf, "name": " ", "scope": "viewer"})
    assert bad.status_code == 422 and 'id="name-error"' in bad.get_data(as_text=True)
    reply = console.post("/console/keys/revoke", data={"csrf_token": csrf, "key_id": keys["dashboards"]["id"]})
    assert reply.status_code == 302
    assert client.get("/v1/experiments", headers=bearer).status_code == 401
    assert console.post("/console/keys/revoke", data={"csrf_token": csrf, "key_id": keys["dashboards"]["id"]}
                        ).status_code == 404


def test_a_viewer_looks_and_changes_nothing(viewer, make_experiment, client, admin) -> None:
    make_experiment("exp-1")
    for path in ("/console/", "/console/experiments/exp-1", "/console/engines", "/console/experiments/exp-1/start"):
        assert viewer.get(path).status_code == 200, path
    html = viewer.get("/console/experiments/exp-1").get_data(as_text=True)
    assert 'id="action-start"' not in html and 'id="edit"' not in html and "New experiment" not in html
    assert "exposures.csv" not in html  # raw rows need an admin key
    csrf = token(viewer, "/console/")
    posts = [("/console/new", {"key": "x", "name": "x"}), ("/console/experiments/exp-1/start", {}),
             ("/console/experiments/exp-1/edit", {"name": "renamed"}), ("/console/keys", {"name": "k", "scope": "admin"}),
             ("/console/keys/revoke", {"key_id": "1"})]
    for path, data in posts:
        assert viewer.post(path, data={"csrf_token": csrf, **data}).status_code == 403, path
    assert viewer.get("/console/keys").status_code == 403
    assert viewer.get("/console/experiments/exp-1/export/exposures.csv").status_code == 403
    view = client.get("/v1/experiments/exp-1", headers=admin).get_json()
    assert view["status"] == "draft" and view["name"] != "renamed" and view["version"] == 1
    assert len(client.get("/v1/experiments", headers=admin).get_json()["experiments"]) == 1
    assert viewer.post("/console/signout", data={"csrf_token": csrf}).status_code == 302  # may sign out
    assert viewer.get("/console/").status_code == 302


def test_unknown_experiment_is_a_404_page(console) -> None:
    reply = console.get("/console/experiments/nope")
    assert reply.status_code == 404 and 'id="error"' in reply.get_data(as_text=True)
    assert console.get("/console/experiments/nope?format=json").get_json()["error"]["code"] == "not_found"


def test_sign_in_returns_to_the_page_asked_for_and_never_elsewhere(client, services) -> None:
    key = new_key(services, "admin", "returner")
    reply = client.get("/console/engines")
    assert "next=/console/engines" in reply.headers["Location"]
    csrf = token(client)
    reply = client.post("/console/signin", data={"csrf_token": csrf, "key": key, "next": "/console/engines"})
    assert reply.headers["Location"].endswith("/console/engines")
    other = client.application.test_client()
    reply = other.post("/console/signin", data={"csrf_token": token(other), "key": key, "next": "//evil.example/"})
    assert reply.headers["Location"].endswith("/console/")
    assert sign_in(other, key).status_code == 302


class _Controls(HTMLParser):
    """Form controls that a person fills in, and the ids that a <label for> names."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.labelled: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label" and a.get("for"):
            self.labelled.add(str(a["for"]))
        if tag in ("input", "select", "textarea") and a.get("type") not in ("hidden", "submit"):
            self.controls.append(a)


def test_every_input_has_a_label(console, make_experiment) -> None:
    make_experiment("exp-1")
    pages = ("/console/", "/console/new", "/console/experiments/exp-1/edit", "/console/keys",
             "/console/experiments/exp-1/start", "/console/engines", "/console/experiments/exp-1")
    seen = 0
    for path in pages:
        parser = _Controls()
        parser.feed(console.get(path).get_data(as_text=True))
        for control in parser.controls:
            assert control.get("id") in parser.labelled or control.get("aria-label"), (path, control)
            seen += 1
    assert seen > 100  # the form alone has dozens of inputs

