"""API hardening: CSV formula injection, security headers, request ids on 500s, auth-failure limits."""

from __future__ import annotations

import csv
import io
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, insert

from abtest.app import create_app
from abtest.errors import RateLimited
from abtest.models import Event, Exposure, RequestLog
from abtest.reports.csv import RESULT_COLUMNS, TEXT_COLUMNS, render_csv, safe_cell
from abtest.services.experiments import get_experiment
from abtest.services.ratelimit import FailureLimiter
from tests.conftest import clear_tables
from tests.reports.factories import Factory, populate

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
# cells a spreadsheet would evaluate: formulas, DDE, arithmetic, and leading tab / carriage return
INJECTIONS = ['=HYPERLINK("http://x","click")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A2)", "\t=1+1",
              "\r=1+1", '=cmd', "-", "+"]
HTML_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'self'")


def read_csv(reply: Any) -> list[dict[str, str]]:
    assert reply.status_code == 200, reply.get_data(as_text=True)
    return list(csv.DictReader(io.StringIO(reply.get_data(as_text=True), newline="")))


# --- 2. CSV formula injection ---------------------------------------------------------------

def test_safe_cell_prefixes_formula_text_only() -> None:
    for text in INJECTIONS:
        assert safe_cell(text) == "'" + text
    for kept in ("plain", "", "a=b", "'=already", "-0.25", "+3", "1e-5", "-1E+5", ".5", -0.25, 3, True, None):
        assert safe_cell(kept) == kept


def test_export_neutralises_formula_cells_in_every_table(client, admin, services, make_experiment) -> None:
    make_experiment("exp-1", start=True)
    with services.db.session() as session:
        exp_id = get_experiment(session, "exp-1").id
    with services.db.transaction() as session:
        for i, unit in enumerate(INJECTIONS):
            session.execute(insert(Exposure).values(
                experiment_id=exp_id, phase=1, unit_id=unit, variant="control", first_seen=T0, last_seen=T0,
                count=1))
            session.execute(insert(RequestLog).values(
                request_id=str(uuid.UUID(int=i)), experiment_id=exp_id, phase=1, variant="control",
                engine="v1-fp32", unit_id=unit, in_experiment=True, shadow=False, status="error",
                error_code=unit[:50], started_at=T0, finished_at=T0, latency_ms=-0.25))
            session.execute(insert(Event).values(
                event_id=f"e{i}", unit_id=unit, name=unit, value=-2.5, timestamp=T0, received_at=T0,
                request_id=None, experiment_key="exp-1"))
    expected = sorted("'" + u for u in INJECTIONS)
    for table, columns in (("exposures", ["unit_id"]), ("requests", ["unit_id", "error_code"]),
                           ("events", ["unit_id", "name"])):
        rows = read_csv(client.get(f"/v1/experiments/exp-1/export?table={table}", headers=admin))
        assert len(rows) == len(INJECTIONS)
        for column in columns:
            assert sorted(r[column] for r in rows) == expected, (table, column)
        for row in rows:  # nothing else of a row starts like a formula, and numbers stay numbers
            for column, cell in row.items():
                assert column in columns or not cell.startswith(("=", "+", "@", "\t", "\r", "'")), (table, cell)
        if table == "requests":
            assert {r["latency_ms"] for r in rows} == {"-0.25"}
        if table == "events":
            assert {r["value"] for r in rows} == {"-2.5"}


def test_posted_event_unit_id_is_neutralised_in_the_export(client, admin, sdk, make_experiment) -> None:
    make_experiment("exp-1", start=True)
    batch = {"events": [{"event_id": "ev-1", "unit_id": "=cmd", "name": "purchase", "value": -1,
                         "experiment": "exp-1"}]}
    reply = client.post("/v1/events", json=batch, headers=sdk)
    assert reply.status_code == 202 and reply.get_json()["accepted"] == 1, reply.get_json()
    rows = read_csv(client.get("/v1/experiments/exp-1/export?table=events", headers=admin))
    assert [(r["unit_id"], r["value"]) for r in rows] == [("'=cmd", "-1.0")]


def _report(metric_name: str) -> Any:
    """A minimal report object: what render_csv reads of one comparison."""
    from abtest.reports import model as M

    effect = (lambda e, lo, hi: M.EffectView(e, None, lo, hi, None))
    comparison = M.ComparisonResult(
        variant="treatment", control_estimate=0.5, treatment_estimate=0.25,
        absolute=effect(-0.25, -0.4, -0.1), relative=effect(-0.5, -0.8, -0.2),
        p_value=0.001, adjusted_p_value=0.002, significant=True,
        sequential=M.SequentialView(None, effect(None, -0.9, -0.1), 0.01, True, 5000.0),
        chance_to_win=0.01, expected_loss=M.ExpectedLoss(None, None, "relative"), error="=1+1",
        relative_error=None)
    estimate = (lambda n: M.Estimate(n, None, None, None, None, None))
    variants = (M.VariantSummary("control", "v1", True, 0.5, 10, 0, 0, 0, 0),
                M.VariantSummary("treatment", "v2", False, 0.5, 12, 0, 0, 0, 0))
    metric = M.MetricResult(metric_name, "binary", "mean", "primary", "increase", 0.0, None, None,
                            {"control": estimate(10), "treatment": estimate(12)}, (comparison,))
    return M.Report(recommendation=None, headline="", experiment=None, generated_at="",  # type: ignore[arg-type]
                    options=None, srm=None, variants=variants, metrics=(metric,), recommendations=(),
                    timeseries=None, latency_histogram=None, shadow=())


def test_report_csv_neutralises_text_and_keeps_negative_numbers() -> None:
    text = render_csv(_report('=HYPERLINK("http://x")'))
    [row] = list(csv.DictReader(io.StringIO(text, newline="")))
    assert row["metric"] == "'=HYPERLINK(\"http://x\")" and row["error"] == "'=1+1"
    assert row["absolute_effect"] == "-0.25" and row["relative_ci_lower"] == "-0.8"
    assert float(row["sequential_relative_ci_lower"]) == -0.9 and row["significant"] == "True"


def fill(db_url: str, units: int, seed: int) -> None:
    """Outcomes and conversions of ``units`` units of exp-1, half in each variant."""
    f = Factory(db_url, "exp-1")
    try:
        populate(f, [(f"u{i}", "control" if i % 2 else "treatment") for i in range(units)],
                 np.random.default_rng(seed), lat_mean={"control": 300, "treatment": 280},
                 err_p={"control": 0.05, "treatment": 0.05}, conv_p={"control": 0.2, "treatment": 0.2})
        f.flush()
    finally:
        f.close()


def test_report_csv_over_http_keeps_numbers_numeric(client, admin, db_url, make_experiment) -> None:
    make_experiment("exp-1", start=True)
    fill(db_url, 60, seed=3)
    reply = client.get("/v1/experiments/exp-1/report?format=csv", headers=admin)
    rows = read_csv(reply)
    assert rows and tuple(rows[0]) == RESULT_COLUMNS
    numeric = [c for c in RESULT_COLUMNS if c not in TEXT_COLUMNS]
    negatives = 0
    for row in rows:
        for column in numeric:
            if row[column]:
                negatives += float(row[column]) < 0  # parses: no quote was prepended
    assert negatives > 0  # the sample has negative effects or bounds, and they stayed numbers


# --- 3. security headers ----------------------------------------------------------------------

def test_security_headers_on_json_html_and_error_responses(client, admin, db_url, make_experiment) -> None:
    make_experiment("exp-1", start=True)
    fill(db_url, 20, seed=1)
    replies = {
        "json": client.get("/v1/experiments/exp-1/report", headers=admin),
        "html": client.get("/v1/experiments/exp-1/report?format=html", headers=admin),
        "unauthorized": client.get("/v1/experiments"),
        "health": client.get("/healthz"),
    }
    for name, reply in replies.items():
        assert reply.headers["X-Content-Type-Options"] == "nosniff", name
        assert reply.headers["Referrer-Policy"] == "no-referrer", name
        assert reply.headers.get("X-Request-Id"), name
    html = replies["html"]
    assert html.status_code == 200 and html.mimetype == "text/html"
    assert html.headers["Content-Security-Policy"] == HTML_CSP
    assert html.headers["X-Frame-Options"] == "DENY"
    assert "<script" not in html.get_data(as_text=True).lower()  # so the CSP needs no script source
    assert replies["json"].status_code == 200 and "Content-Security-Policy" not in replies["json"].headers


# --- 4. request ids and unhandled errors --------------------------------------------------------

SECRET = "password=hunter2 at db.internal:5432"


@pytest.fixture
def boom_client(app: Any) -> Any:
    """The app plus a route that raises an unexpected exception holding internal text."""
    def boom() -> Any:
        raise RuntimeError(f"connection failed: {SECRET}")

    app.add_url_rule("/test-boom", "test_boom", boom)
    return app.test_client()


def test_unhandled_error_hides_the_exception_and_names_a_request_id(boom_client, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="abtest.api.errors"):
        reply = boom_client.get("/test-boom")
    assert reply.status_code == 500
    text = reply.get_data(as_text=True)
    assert "hunter2" not in text and "RuntimeError" not in text and "connection failed" not in text
    body = reply.get_json()
    assert body["error"]["code"] == "internal_error"
    rid = body["request_id"]
    assert uuid.UUID(rid).version == 4 and reply.headers["X-Request-Id"] == rid
    records = [r for r in caplog.records if r.name == "abtest.api.errors" and r.levelno == logging.ERROR]
    assert len(records) == 1
    record = records[0]
    assert getattr(record, "request_id", None) == rid and rid in record.getMessage()
    assert record.exc_info is not None and "hunter2" in str(record.exc_info[1])  # the operator sees it


def test_incoming_request_id_is_echoed_when_safe(boom_client) -> None:
    reply = boom_client.get("/test-boom", headers={"X-Request-Id": "req-42.A_b"})
    assert reply.get_json()["request_id"] == "req-42.A_b" and reply.headers["X-Request-Id"] == "req-42.A_b"
    ok = boom_client.get("/healthz", headers={"X-Request-Id": "a" * 64})
    assert ok.headers["X-Request-Id"] == "a" * 64
    for unsafe in ("a" * 65, "has space", "<script>", "a/b", "ünï", ""):
        reply = boom_client.get("/test-boom", headers={"X-Request-Id": unsafe})
        rid = reply.get_json()["request_id"]
        assert rid != unsafe and uuid.UUID(rid).version == 4 and reply.headers["X-Request-Id"] == rid
    a, b = boom_client.get("/healthz"), boom_client.get("/healthz")
    assert a.headers["X-Request-Id"] != b.headers["X-Request-Id"]  # one id per request


# --- 5. failed-authentication rate limit ------------------------------------------------------

@pytest.fixture
def queries(services: Any) -> Iterator[list[str]]:
    """The SQL statements this thread sends (the database probe's pings run on their own thread)."""
    seen: list[str] = []
    me = threading.get_ident()

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if threading.get_ident() == me:
            seen.append(statement)

    event.listen(services.db.engine, "before_cursor_execute", record)
    yield seen
    event.remove(services.db.engine, "before_cursor_execute", record)


def test_failed_authentications_are_limited_per_address(app, admin, queries) -> None:
    attacker = app.test_client()
    attacker.environ_base = {"REMOTE_ADDR": "10.1.1.1"}
    bad = {"Authorization": "Bearer abt_wrong"}
    statuses, counts = [], []
    for _ in range(25):
        before = len(queries)
        reply = attacker.get("/v1/experiments", headers=bad)
        statuses.append(reply.status_code)
        counts.append(len(queries) - before)
        if reply.status_code == 429:
            assert reply.get_json()["error"]["code"] == "rate_limited"
            assert 1 <= int(reply.headers["Retry-After"]) <= 60
    assert statuses == [401] * 20 + [429] * 5
    assert all(n >= 1 for n in counts[:20]) and counts[20:] == [0] * 5  # limited: no database query
    before = len(queries)
    assert attacker.get("/v1/experiments", headers=admin).status_code == 429  # even a valid key, for now
    assert attacker.get("/v1/experiments").status_code == 429
    assert len(queries) == before
    other = app.test_client()
    other.environ_base = {"REMOTE_ADDR": "10.2.2.2"}
    assert other.get("/v1/experiments", headers=admin).status_code == 200
    assert other.get("/v1/experiments", headers=bad).status_code == 401


def test_the_limit_is_configurable_and_zero_disables_it(db_url, tmp_path) -> None:
    clear_tables(db_url)
    base = {"database_url": db_url, "cache_ttl_s": 0.0, "checkpoint_dir": str(tmp_path),
            "guardrail_interval_s": 0.0}
    for limit, expected in ((3, [401] * 3 + [429] * 2), (0, [401] * 5)):
        application = create_app({**base, "auth_fail_limit": limit, "auth_fail_window_s": 60.0})
        try:
            client = application.test_client()
            client.environ_base = {"REMOTE_ADDR": "10.3.3.3"}
            got = [client.get("/v1/experiments", headers={"Authorization": "Bearer nope"}).status_code
                   for _ in range(5)]
            assert got == expected, limit
        finally:
            application.extensions["abtest"].close()


def test_failure_limiter_window_and_memory_bound() -> None:
    now = [100.0]
    limiter = FailureLimiter(3, 10.0, max_clients=2, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("a")
        limiter.failed("a")
    with pytest.raises(RateLimited) as caught:
        limiter.check("a")
    assert caught.value.retry_after == pytest.approx(10.0)
    now[0] += 4.0
    assert limiter.retry_after("a") == pytest.approx(6.0)
    limiter.check("b")  # another client is unaffected
    now[0] += 6.0  # the oldest failure left the window
    assert limiter.retry_after("a") is None
    for client in ("b", "c", "d"):
        limiter.failed(client)
    assert len(limiter) == 2  # bounded: the client whose last failure is oldest was forgotten


def test_every_response_says_how_long_the_api_held_it(client, sdk, make_experiment) -> None:
    make_experiment("exp-1", start=True)
    replies = [client.get("/healthz"), client.post("/v1/assign", json={"experiment": "exp-1", "unit_id": "u"},
                                                   headers=sdk),
               client.post("/v1/assign", json={"experiment": "nope", "unit_id": "u"}, headers=sdk)]
    for reply in replies:
        name, _, duration = reply.headers["Server-Timing"].partition(";dur=")
        assert name == "app" and 0 <= float(duration) < 5000, reply.headers["Server-Timing"]
    assert [r.status_code for r in replies] == [200, 200, 404]


def test_a_body_over_the_limit_is_413_naming_the_limit_and_its_setting(client, admin) -> None:
    reply = client.post("/v1/experiments", data=b"{" + b" " * 70_000 + b"}", headers={
        **admin, "Content-Type": "application/json"})
    error = reply.get_json()["error"]
    assert reply.status_code == 413 and error["code"] == "payload_too_large"
    assert "65536 bytes" in error["message"] and "ABTEST_MAX_BODY_BYTES" in error["message"]
    assert error["details"] == {"limit_bytes": 65_536}


@pytest.mark.parametrize("field, value", [("key", "other"), ("layer", "l2"), ("layer_share", 0.5)])
def test_patch_of_an_immutable_field_says_it_cannot_change(client, admin, make_experiment, field, value) -> None:
    make_experiment("exp-1")
    reply = client.patch("/v1/experiments/exp-1", json={field: value, "name": "renamed"}, headers=admin)
    error = reply.get_json()["error"]
    assert reply.status_code == 422 and error["details"]["field"] == field
    assert error["message"] == f"{field}: cannot be changed after creation"
    assert client.get("/v1/experiments/exp-1", headers=admin).get_json()["name"] != "renamed"  # nothing written
