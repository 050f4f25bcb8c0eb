"""The SDK against a real ``abtest serve`` process (SQLite and PostgreSQL): nothing lost, nothing twice.

Every test tracks events under a name of its own and then reads the database directly, so
"exactly the events tracked, each once" is checked on the stored rows, not on counters.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from abtest.client import Client

from .conftest import LiveServer, stored_ids


def server_env(url: str, tmp_path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"ABTEST_DATABASE_URL": url, "ABTEST_LOG_LEVEL": "WARNING",
            "ABTEST_CHECKPOINT_DIR": str(tmp_path / "checkpoints")}


def fast_client(base_url: str, key: str, **options) -> Client:  # type: ignore[no-untyped-def]
    """A client that batches small and retries quickly, so outages are short to sit out."""
    defaults = dict(batch_size=100, flush_interval=0.05, backoff_base=0.05, backoff_max=0.5, timeout=5.0)
    return Client(base_url, key, **{**defaults, **options})


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def live(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    """One server (2 gunicorn workers) per backend for this module; tests may restart it."""
    tmp = tmp_path_factory.mktemp("live")
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else f"sqlite:///{tmp / 'live.sqlite'}"
    server = LiveServer(url, server_env(url, tmp), workers=2)
    server.start()
    yield server
    server.stop()


def test_concurrent_track_loses_nothing_and_duplicates_nothing(live) -> None:
    base_url, key, url = live.base_url, live.key, live.url
    name = f"threads-{uuid.uuid4().hex[:8]}"
    ids: list[list[str]] = [[] for _ in range(8)]
    with fast_client(base_url, key, batch_size=250, max_buffer=5000) as client:

        def produce(k: int) -> None:
            for i in range(500):
                ids[k].append(client.track(f"user-{k}-{i}", name, value=float(i)))

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client.flush(timeout=60)
        stats = client.stats
    tracked = [i for chunk in ids for i in chunk]
    assert len(set(tracked)) == 8 * 500
    rows = stored_ids(url, name)
    assert sorted(rows) == sorted(tracked)
    # A batch whose answer timed out under load is resent and comes back as duplicates.
    assert stats.sent + stats.duplicates == 4000 and stats.sent > 0
    assert (stats.rejected, stats.dropped) == (0, 0)


def test_lost_acknowledgements_are_resent_and_counted_once(live, fault_proxy) -> None:
    """The server stores a batch but its answer never arrives: the resend is a duplicate."""
    key, url = live.key, live.url
    proxy = fault_proxy(live.port)
    name = f"lost-acks-{uuid.uuid4().hex[:8]}"
    with fast_client(f"http://127.0.0.1:{proxy.port}", key) as client:
        proxy.lose_responses = 3
        tracked = [client.track(f"user-{i}", name) for i in range(1000)]
        assert client.flush(timeout=60)
        stats = client.stats
    assert proxy.lost == 3
    assert sorted(stored_ids(url, name)) == sorted(tracked)
    assert stats.duplicates > 0 and stats.sent + stats.duplicates == 1000
    assert stats.retries >= 3 and stats.dropped == 0


def test_sdk_survives_a_server_restart_mid_run(live) -> None:
    """Events keep being tracked while the server stops and starts again on the same port and DB."""
    name = f"restart-{uuid.uuid4().hex[:8]}"
    tracked: list[str] = []
    done = threading.Event()
    marks: dict[str, int] = {}

    def produce(client: Client) -> None:
        i = 0
        while not done.is_set():
            tracked.append(client.track(f"user-{i % 300}", name, value=float(i)))
            i += 1
            if i % 10 == 0:
                time.sleep(0.01)  # about 1,000 events/s: a steady trickle, not a flood

    client = fast_client(live.base_url, live.key, max_buffer=100_000)
    producer = threading.Thread(target=produce, args=(client,))
    try:
        producer.start()
        time.sleep(0.5)
        live.stop()
        marks["stopped"] = len(tracked)
        time.sleep(0.5)  # tracking goes on with nobody listening
        live.start()
        marks["restarted"] = len(tracked)
        time.sleep(0.5)
        done.set()
        producer.join()
        assert client.flush(timeout=60)
        stats = client.close()
    finally:
        done.set()
        client.close(timeout=1)
    assert 0 < marks["stopped"] < marks["restarted"] < len(tracked)  # events on both sides of the gap
    rows = stored_ids(live.url, name)
    assert len(rows) == len(tracked) == len(set(tracked))
    assert set(rows) == set(tracked)
    assert stats.retries > 0  # the outage was real, not skipped
    assert (stats.dropped, stats.rejected) == (0, 0)
    assert stats.sent + stats.duplicates == len(tracked)
