"""Layer placement under concurrency: mutual exclusion holds when creates race (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from abtest.errors import Conflict
from abtest.models import Experiment
from abtest.services.experiments import _place_in_layer, layer_lock_key
from tests.conftest import experiment_payload

THREADS = 10


def _race(app: Any, admin: dict[str, str], payloads: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    """POST every payload at once, one thread (and test client) each; the replies in order."""
    barrier = threading.Barrier(len(payloads))
    replies: list[tuple[int, Any] | None] = [None] * len(payloads)

    def post(i: int) -> None:
        client = app.test_client()
        barrier.wait()
        reply = client.post("/v1/experiments", json=payloads[i], headers=admin)
        replies[i] = (reply.status_code, reply.get_json())

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in replies), "a create did not finish"
    return replies  # type: ignore[return-value]


def test_concurrent_creates_in_one_layer_never_overlap(app, admin, services) -> None:
    payloads = [experiment_payload(f"exp-{i}", layer="homepage", layer_share=0.5) for i in range(THREADS)]
    replies = _race(app, admin, payloads)
    statuses = sorted(status for status, _ in replies)
    assert statuses == [201] * 2 + [409] * (THREADS - 2), replies
    ranges = sorted(tuple(body["layer_range"]) for status, body in replies if status == 201)
    assert ranges == [(0.0, 0.5), (0.5, 1.0)]
    for status, body in replies:
        if status == 409:
            assert body["error"]["code"] == "conflict"
            assert body["error"]["details"]["field"] == "layer_share"
    with services.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Experiment)) == 2
        stored = sorted(session.execute(select(Experiment.layer_start, Experiment.layer_end)).all())
    assert [tuple(r) for r in stored] == [(0.0, 0.5), (0.5, 1.0)]


def test_concurrent_creates_in_different_layers_do_not_block_each_other(app, admin, services) -> None:
    payloads = [experiment_payload(f"exp-{i}", layer=f"layer-{i % 2}", layer_share=0.5) for i in range(4)]
    replies = _race(app, admin, payloads)
    assert [status for status, _ in replies] == [201] * 4, replies
    by_layer: dict[str, list[tuple[float, float]]] = {}
    for _, body in replies:
        by_layer.setdefault(body["layer"], []).append(tuple(body["layer_range"]))
    assert {k: sorted(v) for k, v in by_layer.items()} == {
        "layer-0": [(0.0, 0.5), (0.5, 1.0)], "layer-1": [(0.0, 0.5), (0.5, 1.0)]}


def test_sqlite_stale_snapshot_is_a_409_not_a_500(app, admin, services, make_experiment) -> None:
    """A transaction that read before another commit cannot take SQLite's write lock
    (SQLITE_BUSY_SNAPSHOT): placement answers 409, and nothing overlaps."""
    if services.db.dialect != "sqlite":
        pytest.skip("PostgreSQL waits on the advisory lock instead")
    with services.db.engine.connect() as conn:
        conn.exec_driver_sql("BEGIN")  # a deferred transaction that reads first: a snapshot
        conn.exec_driver_sql("SELECT count(*) FROM experiments").all()
        make_experiment("exp-0", layer="homepage", layer_share=0.5)  # another connection commits
        session = Session(bind=conn)
        exp = Experiment(key="exp-1")
        with pytest.raises(Conflict) as caught:
            _place_in_layer(session, exp, "homepage", 0.5)
        assert caught.value.status == 409 and caught.value.details == {"field": "layer"}
        session.close()
        conn.rollback()


def test_postgres_lock_wait_timeout_is_a_409(app, services) -> None:
    """A placement that cannot get the layer's advisory lock in time answers 409, not 500."""
    if services.db.dialect != "postgresql":
        pytest.skip("SQLite has no advisory locks")
    with services.db.engine.connect() as holder, services.db.engine.connect() as waiter:
        holder.execute(select(func.pg_advisory_xact_lock(layer_lock_key("homepage"))))
        waiter.exec_driver_sql("SET LOCAL lock_timeout = '50ms'")
        session = Session(bind=waiter)
        with pytest.raises(Conflict) as caught:
            _place_in_layer(session, Experiment(key="exp-1"), "homepage", 0.5)
        assert caught.value.details == {"field": "layer"}
        session.close()
        waiter.rollback()
        other = Session(bind=waiter)  # another layer is not blocked by it
        exp = Experiment(key="exp-2")
        _place_in_layer(other, exp, "checkout", 0.5)
        assert (exp.layer_start, exp.layer_end) == (0.0, 0.5)
        other.close()
        waiter.rollback()
        holder.rollback()
