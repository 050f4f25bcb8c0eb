"""The outcome log's group commit: a row the database refuses fails alone; waits are bounded."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from abtest.db import Database
from abtest.errors import BadRequest, ServiceUnavailable
from abtest.models import Exposure, RequestLog, UnitOutcome
from abtest.services.outcomes import OutcomeLog
from tests.conftest import experiment_payload

BAD = "bad-\ud800-unit"  # a lone surrogate: no driver can encode it (and NUL for PostgreSQL)


def row(unit: str, exp_id: int, status: str = "ok") -> dict:
    now = datetime.now(timezone.utc)
    return {"request_id": str(uuid.uuid4()), "experiment_id": exp_id, "phase": 1, "variant": "control",
            "engine": "v1-fp32", "unit_id": unit, "in_experiment": True, "shadow": False, "status": status,
            "started_at": now, "finished_at": now, "latency_ms": 12.5}


@pytest.fixture
def log_and_exp(client, admin, services):  # type: ignore[no-untyped-def]
    assert client.post("/v1/experiments", json=experiment_payload("iso"), headers=admin).status_code == 201
    with services.db.session() as session:
        from abtest.services.experiments import get_experiment

        exp_id = get_experiment(session, "iso").id
    yield services.outcomes, services.db, exp_id


def count(db: Database, model, **where) -> int:  # type: ignore[no-untyped-def]
    with db.session() as session:
        stmt = select(func.count()).select_from(model)
        for k, v in where.items():
            stmt = stmt.where(getattr(model, k) == v)
        return int(session.scalar(stmt))


def test_a_refused_row_fails_alone_in_its_group_commit(log_and_exp, db_url) -> None:
    log, db, exp_id = log_and_exp
    bad_units = [BAD] + (["nul\x00unit"] if db_url.startswith("postgresql") else [])
    good = [row(f"u{i}", exp_id) for i in range(40)]
    bad = [row(u, exp_id) for u in bad_units]
    entries = good[:20] + bad + good[20:]
    with log._commit_lock:  # queue everything first, so it all lands in one batch
        futures = [log.write_nowait(r, (exp_id, 1, r["unit_id"], "control", r["started_at"])) for r in entries]
    for f, r in zip(futures, entries):
        if r in bad:
            with pytest.raises(BadRequest) as info:
                f.result(timeout=10)
            assert info.value.code == "unstorable" and info.value.status == 400
        else:
            assert f.result(timeout=10) is None
    assert count(db, RequestLog) == 40 and count(db, UnitOutcome) == 40 and count(db, Exposure) == 40
    assert log.dropped["requests"] == len(bad)


def test_a_refused_exposure_fails_alone(log_and_exp) -> None:
    log, db, exp_id = log_and_exp
    now = datetime.now(timezone.utc)
    errors: list[BaseException] = []

    def assign(unit: str) -> None:
        try:
            log.write_exposure((exp_id, 1, unit, "control", now), timeout=10)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    units = [f"x{i}" for i in range(30)] + [BAD]
    threads = [threading.Thread(target=assign, args=(u,)) for u in units]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1 and isinstance(errors[0], BadRequest)
    assert count(db, Exposure) == 30 and log.dropped["exposures"] == 1


def test_a_commit_that_cannot_start_in_time_is_withdrawn(log_and_exp) -> None:
    log, db, exp_id = log_and_exp
    with log._commit_lock:  # another commit holds the lock for longer than the caller may wait
        with pytest.raises(ServiceUnavailable) as info:
            log.write(row("late", exp_id), timeout=0.3)
    assert info.value.retry_after == 1 and "nothing was stored" in info.value.message
    log.write(row("next", exp_id))  # the withdrawn entry is not written later
    assert count(db, RequestLog) == 1 and count(db, RequestLog, unit_id="late") == 0


def test_database_unreachable_fails_the_batch_with_503(tmp_path) -> None:
    db = Database("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_timeout_s=2)
    log = OutcomeLog(db)
    try:
        with pytest.raises(ServiceUnavailable):
            log.write(row("u", 1))
        assert not log.dropped  # an outage drops nothing for good: the caller is told to retry
    finally:
        log.close()
        db.dispose()

