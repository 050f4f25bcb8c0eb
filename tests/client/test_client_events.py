"""track(): batching, flush/close, idempotent retries, buffer-full policies."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timezone

import pytest

import abtest.client as sdk
from abtest.client import ClientStats

from sdk_fakes import FakeEventServer, SleepRecorder, wait_until


def settled_total(stats: ClientStats) -> int:
    return stats.sent + stats.duplicates + stats.rejected + stats.dropped + stats.pending


def test_event_shape_and_returned_event_id(make_client, server: FakeEventServer) -> None:
    client = make_client()
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    eid = client.track("u1", "purchase", 19.5, request_id="req-1", experiment="exp", timestamp=when)
    plain = client.track("u2", "click")
    assert client.flush(timeout=5)
    assert server.store[eid] == {
        "event_id": eid, "unit_id": "u1", "name": "purchase", "value": 19.5,
        "timestamp": "2026-01-02T03:04:05Z", "request_id": "req-1", "experiment": "exp",
    }
    event = server.store[plain]
    assert uuid.UUID(event["event_id"]).version == 4
    assert event["value"] == 1.0 and "request_id" not in event and "experiment" not in event
    age = datetime.now(timezone.utc) - datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    assert 0 <= age.total_seconds() < 5


@pytest.mark.parametrize(
    ("args", "exc"),
    [(("", "x"), ValueError), (("u", ""), ValueError), (("u", "x", True), TypeError), (("u", "x", "1"), TypeError),
     (("u", "x", float("nan")), ValueError), (("u", "x", 1.0, None, None, datetime(2026, 1, 1)), ValueError)],
)
def test_invalid_track_arguments_raise_in_caller(make_client, args: tuple, exc: type) -> None:
    client = make_client()
    with pytest.raises(exc):
        client.track(*args)
    assert client.stats.tracked == 0


def test_batches_by_size_then_flush_sends_remainder(make_client, server: FakeEventServer) -> None:
    client = make_client(batch_size=10)
    for i in range(25):
        client.track(f"u{i}", "view")
    assert wait_until(lambda: server.batch_sizes() == [10, 10])
    time.sleep(0.05)
    assert server.batch_sizes() == [10, 10]  # the 5 left wait for the (60 s) interval
    assert client.flush(timeout=5)
    assert server.batch_sizes() == [10, 10, 5]
    assert client.stats == ClientStats(tracked=25, sent=25, batches=3)


def test_batches_by_interval_without_flush(make_client, server: FakeEventServer) -> None:
    client = make_client(flush_interval=0.05)
    for i in range(3):
        client.track(f"u{i}", "view")
    assert wait_until(lambda: server.batch_sizes() == [3], timeout=3)
    assert wait_until(lambda: client.stats.sent == 3)


def test_close_and_context_manager_deliver_everything(make_client, server: FakeEventServer) -> None:
    client = make_client(batch_size=7)
    ids = {client.track(f"u{i}", "view") for i in range(30)}
    stats = client.close()
    assert set(server.store) == ids
    assert (stats.sent, stats.pending, stats.dropped) == (30, 0, 0)
    with make_client() as other:
        more = {other.track("u", "view") for _ in range(5)}
    assert more <= set(server.store)


def test_lost_acknowledgements_resend_same_ids_and_count_once(
    make_client, server: FakeEventServer, sleeps: SleepRecorder
) -> None:
    # The server stores the batch, then the answer is lost twice (503, read
    # timeout), then a connection is refused: the SDK must resend the very
    # same events and the store must hold each exactly once.
    server.script.extend(["store+503", "store+timeout", "connect"])
    client = make_client(batch_size=50)
    ids = [client.track(f"u{i}", "purchase", float(i)) for i in range(50)]
    assert client.flush(timeout=5)
    assert len(server.batches) == 4
    assert all([e["event_id"] for e in batch] == ids for batch in server.batches)
    assert sorted(server.store) == sorted(ids)
    stats = client.stats
    assert (stats.sent, stats.duplicates, stats.retries, stats.dropped) == (0, 50, 3, 0)
    assert len(sleeps.delays) == 3


def test_events_retry_on_429_honours_retry_after(make_client, server: FakeEventServer, sleeps: SleepRecorder) -> None:
    server.script.extend(["429:2.5", "500", "503"])
    client = make_client(backoff_base=0.2)
    client.track("u", "view")
    assert client.flush(timeout=5)
    assert sleeps.delays[0] == 2.5
    assert 0 <= sleeps.delays[1] <= 0.4 and 0 <= sleeps.delays[2] <= 0.8
    assert client.stats.sent == 1 and client.stats.retries == 3


def test_rejected_events_are_counted_not_retried(make_client, server: FakeEventServer) -> None:
    server.reject = lambda event: "future timestamp" if event["unit_id"] == "bad" else None
    client = make_client()
    client.track("good", "view")
    client.track("bad", "view")
    client.track("good", "view")
    assert client.flush(timeout=5)
    assert len(server.batches) == 1 and len(server.store) == 2
    stats = client.stats
    assert (stats.sent, stats.rejected, stats.retries) == (2, 1, 0)
    assert "future timestamp" in (stats.last_error or "")


def test_non_retryable_batch_error_is_dropped_and_counted(make_client, server: FakeEventServer) -> None:
    server.script.append("401")
    client = make_client()
    client.track("u", "view")
    assert client.flush(timeout=5)
    assert client.stats.dropped == 1 and client.stats.retries == 0
    client.track("u", "view")
    assert client.flush(timeout=5)
    assert client.stats.sent == 1


def test_payload_too_large_splits_the_batch(make_client, server: FakeEventServer) -> None:
    server.max_batch = 4
    client = make_client(batch_size=10)
    ids = {client.track("u", "view") for _ in range(10)}
    assert client.flush(timeout=5)
    assert set(server.store) == ids and client.stats.sent == 10
    assert server.batch_sizes() == [10, 5, 2, 3, 5, 2, 3]  # 413, then halves, recursively


def test_close_deadline_drops_and_counts_undeliverable_events(make_client, server: FakeEventServer) -> None:
    server.script.extend(["503"] * 10_000)
    client = make_client(sleep=None, backoff_base=0.01, backoff_max=0.05)
    for _ in range(20):
        client.track("u", "view")
    started = time.monotonic()
    stats = client.close(timeout=0.3)
    assert time.monotonic() - started < 2.0
    assert (stats.tracked, stats.dropped, stats.pending, stats.sent) == (20, 20, 0, 0)
    assert stats.retries > 0 and server.store == {}


def test_flush_timeout_returns_false_while_server_down(make_client, server: FakeEventServer) -> None:
    server.script.extend(["503"] * 10_000)
    client = make_client(sleep=None, backoff_base=0.01, backoff_max=0.02)
    client.track("u", "view")
    assert client.flush(timeout=0.1) is False
    assert client.stats.pending == 1
    server.script.clear()
    assert client.flush(timeout=5) is True
    assert client.stats.sent == 1


def _stall(client, server: FakeEventServer, batch_size: int) -> None:
    """Hold the sender inside a request so the buffer can fill up."""
    server.gate.clear()
    for _ in range(batch_size):
        client.track("first", "view")
    assert wait_until(lambda: client.stats.pending == batch_size and not client._pipeline._buf)


def test_on_full_raise(make_client, server: FakeEventServer) -> None:
    client = make_client(batch_size=5, max_buffer=5, on_full="raise")
    _stall(client, server, 5)
    for _ in range(5):
        client.track("queued", "view")
    with pytest.raises(sdk.BufferFullError):
        client.track("extra", "view")
    server.gate.set()
    assert client.flush(timeout=5)
    assert client.stats == ClientStats(tracked=10, sent=10, batches=2)


def test_on_full_drop_oldest_keeps_newest(make_client, server: FakeEventServer) -> None:
    client = make_client(batch_size=5, max_buffer=5, on_full="drop_oldest")
    _stall(client, server, 5)
    ids = [client.track(f"u{i}", "view") for i in range(8)]
    server.gate.set()
    assert client.flush(timeout=5)
    stats = client.stats
    assert (stats.tracked, stats.sent, stats.dropped) == (13, 10, 3)
    assert set(ids[3:]) <= set(server.store) and not set(ids[:3]) & set(server.store)


def test_on_full_block_waits_then_drops_oldest(make_client, server: FakeEventServer) -> None:
    client = make_client(batch_size=5, max_buffer=5, on_full="block", block_timeout=0.05)
    _stall(client, server, 5)
    for i in range(5):
        client.track(f"u{i}", "view")
    started = time.monotonic()
    client.track("late", "view")
    assert time.monotonic() - started >= 0.04
    assert client.stats.dropped == 1
    server.gate.set()
    assert client.flush(timeout=5)
    assert settled_total(client.stats) == 11 and client.stats.sent == 10


def test_on_full_block_succeeds_when_room_frees(make_client, server: FakeEventServer) -> None:
    client = make_client(batch_size=5, max_buffer=5, on_full="block", block_timeout=5.0)
    _stall(client, server, 5)
    for i in range(5):
        client.track(f"u{i}", "view")
    threading.Timer(0.05, server.gate.set).start()
    client.track("late", "view")  # waits for the stalled batch to finish
    assert client.flush(timeout=5)
    assert client.stats == ClientStats(tracked=11, sent=11, batches=3)


def test_many_threads_tracking_lose_nothing(make_client, server: FakeEventServer) -> None:
    client = make_client(batch_size=500, max_buffer=2_000, on_full="block", block_timeout=5.0, flush_interval=0.05)
    per_thread, threads = 2_000, 8
    server.script.extend(["503", "store+503", "connect"])  # faults mid-run must not lose or double-count
    ids: list[list[str]] = [[] for _ in range(threads)]

    def worker(k: int) -> None:
        for i in range(per_thread):
            ids[k].append(client.track(f"t{k}-{i}", "view"))

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert client.flush(timeout=15)
    expected = {eid for chunk in ids for eid in chunk}
    assert len(expected) == per_thread * threads
    assert set(server.store) == expected
    stats = client.stats
    assert stats.tracked == stats.sent + stats.duplicates == per_thread * threads
    assert stats.dropped == 0 and stats.pending == 0


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"value": 10**400}, ValueError),
    ({"unit_id": "u" * 201}, ValueError),
    ({"name": "   "}, ValueError),
    ({"request_id": "r" * 37}, ValueError),
    ({"timestamp": "yesterday"}, ValueError),
])
def test_make_event_refuses_what_the_server_would_reject(kwargs, error) -> None:
    from abtest.client._events import make_event

    args = {"unit_id": "u1", "name": "purchase", **kwargs}
    with pytest.raises(error):
        make_event(**args)


def test_make_event_normalizes_string_timestamps_to_utc() -> None:
    from abtest.client._events import make_event

    assert make_event("u", "n", timestamp="2026-01-02T03:04:05+02:00")["timestamp"] == "2026-01-02T01:04:05Z"
    assert make_event("u", "n", timestamp="2026-01-02T03:04:05")["timestamp"] == "2026-01-02T03:04:05Z"
