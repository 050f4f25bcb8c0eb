"""The outcome log: a write returns only once its row is committed; replays never duplicate."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone

from sqlalchemy import func, select

from abtest.models import RequestLog


def row(request_id: str) -> dict:
    now = datetime.now(timezone.utc)
    return {"request_id": request_id, "engine": "v1-fp32", "unit_id": "u", "status": "ok",
            "started_at": now, "finished_at": now, "latency_ms": 1.0}


def test_concurrent_writes_are_visible_when_write_returns_and_replays_do_not_duplicate(services) -> None:
    ids = [str(uuid.uuid4()) for _ in range(64)]
    missing: list[str] = []

    def writer(request_id: str) -> None:
        services.outcomes.write(row(request_id))
        with services.db.session() as session:  # committed before write() returned
            if session.get(RequestLog, request_id) is None:
                missing.append(request_id)

    threads = [threading.Thread(target=writer, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert missing == []
    services.outcomes.write(row(ids[0]))  # a replay of an answered request
    services.outcomes.write_nowait(row(ids[1])).result(10)
    with services.db.session() as session:
        assert session.scalar(select(func.count()).select_from(RequestLog)) == 64
