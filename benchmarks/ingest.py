"""Event ingestion benchmark: POST /v1/events into PostgreSQL, raw batches and the SDK's track().

    python -m benchmarks.ingest [--quick] [--server-url URL] [--workers N] [--clients N]

Prints one JSON object. A fresh PostgreSQL database is created for the run on the server at
``--server-url`` (trust auth) and dropped afterwards; ``abtest serve`` (gunicorn, gthread,
``--workers`` processes) runs on it. The load comes from a second process so the server's
CPU time and the client's are not measured as one:

* ``http``: ``--clients`` threads, each with its own keep-alive connection, POST pre-built
  batches of 500 events (what the SDK sends) as fast as the server acknowledges them;
  events/s counts acknowledged events, latency is per batch.
* ``sdk``: ``--clients`` threads, each with its own :class:`abtest.client.Client`
  (``batch_size=500``), call ``track()`` then ``flush()``; events/s is tracked events over
  the time from the first ``track()`` to the end of the last ``flush()``.

Afterwards the rows in the database are counted per phase and compared with what was sent
(every event once: zero loss, zero duplicates), and the first batches are sent again to
check that a resend is acknowledged as duplicates and stores nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from abtest.db import Database, upgrade
from abtest.testing import running_server
from abtest.services.events import EventStore, ingest

from ._http import percentiles, run_load_process, timed_threads

BATCH = 500
DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _bodies(tag: str, client: int, batches: int) -> list[bytes]:
    """Pre-serialized request bodies, so the load process spends its CPU on sending."""
    now = datetime.now(timezone.utc).isoformat()
    out = []
    for b in range(batches):
        events = [{"event_id": str(uuid.uuid4()), "unit_id": f"{tag}-{client}-{(b * BATCH + i) % 5000}",
                   "name": tag, "value": float(i % 7), "timestamp": now,
                   **({"experiment": "bench"} if i % 2 else {})} for i in range(BATCH)]
        out.append(json.dumps({"events": events}).encode())
    return out


def _post_batches(args: dict[str, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args['key']}", "Content-Type": "application/json"}
    per_client = [_bodies("bench_http", c, args["batches"] // args["clients"]) for c in range(args["clients"])]
    latencies: list[float] = []
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0, "errors": 0}
    lock = threading.Lock()

    def worker(bodies: list[bytes]) -> None:
        mine, acc = [], dict.fromkeys(totals, 0)
        with httpx.Client(base_url=args["base_url"], headers=headers, timeout=60) as http:
            for body in bodies:
                t0 = time.perf_counter()
                reply = http.post("/v1/events", content=body)
                mine.append((time.perf_counter() - t0) * 1000)
                if reply.status_code != 202:
                    acc["errors"] += 1
                    continue
                ack = reply.json()
                acc["accepted"] += ack["accepted"]
                acc["duplicates"] += ack["duplicates"]
                acc["rejected"] += len(ack["rejected"])
        with lock:
            latencies.extend(mine)
            for k, v in acc.items():
                totals[k] += v

    elapsed = timed_threads(worker, per_client)
    sent = sum(len(b) for b in per_client) * BATCH
    resend = _resend(args, per_client[0][:4], headers)
    return {"events_sent": sent, **totals, "seconds": round(elapsed, 3),
            "events_per_s": round(totals["accepted"] / elapsed), "batches": len(latencies),
            "batch_latency": percentiles(latencies), "resend_check": resend}


def _resend(args: dict[str, Any], bodies: list[bytes], headers: dict[str, str]) -> dict[str, int]:
    """Send already-stored batches again: they must all come back as duplicates."""
    acks = [httpx.post(f"{args['base_url']}/v1/events", content=b, headers=headers, timeout=60).json()
            for b in bodies]
    return {"events_resent": len(bodies) * BATCH, "accepted": sum(a["accepted"] for a in acks),
            "duplicates": sum(a["duplicates"] for a in acks)}


def _track(args: dict[str, Any]) -> dict[str, Any]:
    from abtest.client import Client

    per_client = args["sdk_events"] // args["clients"]
    stats: list[Any] = []
    lock = threading.Lock()
    clients = [Client(args["base_url"], args["key"], batch_size=BATCH, flush_interval=0.2,
                      max_buffer=per_client, timeout=60) for _ in range(args["clients"])]

    def worker(c: int) -> None:
        client = clients[c]
        for i in range(per_client):
            client.track(f"bench_sdk-{c}-{i % 5000}", "bench_sdk", value=float(i % 7))
        client.flush()
        with lock:
            stats.append(client.stats)

    elapsed = timed_threads(worker, range(args["clients"]))
    for client in clients:
        client.close()
    total = {k: sum(getattr(s, k) for s in stats) for k in ("tracked", "sent", "duplicates", "rejected",
                                                             "dropped", "retries", "batches")}
    return {"events_tracked": per_client * args["clients"], "seconds": round(elapsed, 3),
            "events_per_s": round(total["tracked"] / elapsed), "client_stats": total}


def load(args: dict[str, Any]) -> dict[str, Any]:
    """The second process: both phases, one after the other."""
    return {"http": _post_batches(args), "sdk": _track(args)}


def in_process(url: str, batches: int) -> dict[str, Any]:
    """The handler's own cost without HTTP: validate and insert batches, one thread, CPU time."""
    db = Database(url)
    store = EventStore(db)
    bodies = [json.loads(b) for b in _bodies("bench_inproc", 0, batches)]
    wall, cpu = time.perf_counter(), time.process_time()
    accepted = sum(ingest(store, body).accepted for body in bodies)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    db.dispose()
    return {"events_sent": batches * BATCH, "accepted": accepted, "events_per_s": round(accepted / wall),
            "python_cpu_ms_per_batch": round(cpu / batches * 1000, 2),
            "wall_ms_per_batch": round(wall / batches * 1000, 2)}


def _rows(url: str) -> dict[str, dict[str, int]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        result = conn.execute(text(
            "SELECT name, count(*), count(DISTINCT event_id) FROM events GROUP BY name")).all()
    engine.dispose()
    return {name: {"rows": n, "distinct_event_ids": d} for name, n, d in result}


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, migrated database on the PostgreSQL server at ``server_url``, dropped afterwards."""
    name = f"abtest_bench_{uuid.uuid4().hex[:10]}"
    server = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = server_url.rsplit("/", 1)[0] + f"/{name}"
        upgrade(url)
        yield url
    finally:
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()


@contextlib.contextmanager
def serving(env: dict[str, str], workers: int) -> Iterator[tuple[str, str]]:
    """``running_server``, retried once when a worker fails to boot.

    create_app inserts the bootstrap admin key check-then-insert, so gunicorn workers booting
    together can race on its unique hash and one of them dies; a second start gets past it.
    """
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_server(env=env, workers=workers))
        except RuntimeError as exc:
            if "Worker failed to boot" not in str(exc):
                raise
            server = stack.enter_context(running_server(env=env, workers=workers))
        yield server


def _exact(phase: dict[str, Any], sent: int) -> bool:
    """Every event sent is stored, once."""
    return phase["database"]["rows"] == sent == phase["database"]["distinct_event_ids"]


def run(server_url: str, workers: int, clients: int, batches: int, sdk_events: int) -> dict[str, Any]:
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews every figure
    with fresh_database(server_url) as url:
        inproc = in_process(url, max(10, batches // 4))
        env = {"ABTEST_DATABASE_URL": url, "ABTEST_LOG_LEVEL": "WARNING"}
        with serving(env, workers) as (base_url, admin_key):
            result = run_load_process("benchmarks.ingest", {
                "base_url": base_url, "key": admin_key, "clients": clients,
                "batches": batches, "sdk_events": sdk_events})
        rows = _rows(url)
    http, sdk = result["http"], result["sdk"]
    none = {"rows": 0, "distinct_event_ids": 0}
    inproc["database"] = rows.get("bench_inproc", none)
    http["database"] = rows.get("bench_http", none)
    sdk["database"] = rows.get("bench_sdk", none)
    return {
        "benchmark": "ingest", "database": "postgresql", "server_workers": workers,
        "concurrent_clients": clients, "batch_size": BATCH, "cpu_count": os.cpu_count(),
        "load_average_1m_before": load_before, "load_average_1m_after": round(os.getloadavg()[0], 2),
        "in_process": inproc, "http": http, "sdk": sdk,
        "zero_loss_zero_duplicates": (
            _exact(inproc, inproc["events_sent"]) and _exact(http, http["events_sent"])
            and _exact(sdk, sdk["events_tracked"]) and http["resend_check"]["accepted"] == 0),
        "target_events_per_s": 20_000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--server-url", default=DEFAULT_SERVER, help="PostgreSQL server to create the database on")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.load:
        print(json.dumps(load(json.loads(ns.load))))
        return
    batches, sdk_events = (80, 40_000) if ns.quick else (400, 200_000)
    print(json.dumps(run(ns.server_url, ns.workers, ns.clients, batches, sdk_events), indent=2))


if __name__ == "__main__":
    main()
