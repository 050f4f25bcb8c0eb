"""Report benchmark: time the JSON report over 100k, 1M and 10M request rows in PostgreSQL.

    python -m benchmarks.report [--quick] [--server-url URL] [--sizes 100000,1000000]

Creates a fresh database on the server (default ``postgresql+psycopg://postgres@127.0.0.1:5432/
test``, trust auth), migrates it, and for each size: truncates the log tables, fills them with
COPY (psycopg3 ``cursor.copy``) -- ``rows`` requests over ``rows / 20`` units (two variants,
clustered latencies, 2% errors, 1% rejected, 5% shadow copies), one exposure per unit and about
0.15 purchase events per unit -- computes the report rollups from the log
(:func:`abtest.reports.rollups.rebuild`, what the live write path maintains as it goes), runs
``VACUUM ANALYZE``, then times ``build_report`` (the function behind ``GET /report`` in JSON;
best and median of ``--repeat`` runs) and the Python heap peak during one build (tracemalloc).
The database is dropped at the end. Prints one JSON object: per size rows, units, events, fill
and rollup seconds, report seconds, heap peak, how the quantile CIs were computed, and the
growth ratio of report time per 10x rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from sqlalchemy import create_engine, text

from abtest.db import Database, upgrade
from abtest.reports import ReportOptions, build_report
from abtest.services.experiments import create_experiment, transition
from abtest.reports.rollups import rebuild

SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
UNITS_PER_ROW = 1 / 20
CHUNK = 500_000
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
EXPERIMENT = {
    "key": "bench", "name": "V2 INT4 vs V1 FP32 (benchmark)",
    "variants": [{"key": "control", "engine": "v1-fp32", "weight": 0.5, "control": True},
                 {"key": "treatment", "engine": "v2-int4", "weight": 0.5}],
    "metrics": [{"name": "conversion", "event": "purchase", "kind": "binary", "role": "primary"},
                {"name": "revenue", "event": "purchase", "kind": "sum"}],
}


def _psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _csv(frame: dict[str, Any], n: int) -> bytes:
    """Tab-separated COPY text of equally long columns (no quoting needed: no tabs/newlines)."""
    if not n:
        return b""
    return pd.DataFrame(frame).to_csv(sep="\t", header=False, index=False).encode()


def _iso(seconds: np.ndarray) -> np.ndarray:
    """UTC timestamps (seconds after T0) as ISO 8601 text with an explicit offset."""
    stamps = np.datetime64(T0.replace(tzinfo=None), "us") + (seconds * 1e6).astype("timedelta64[us]")
    return np.char.add(np.datetime_as_string(stamps, unit="us"), "+00:00")


def fill(url: str, exp_id: int, rows: int, seed: int = 0) -> dict[str, Any]:
    """COPY ``rows`` requests, their units' exposures and purchase events; returns counts."""
    rng = np.random.default_rng(seed)
    units = max(int(rows * UNITS_PER_ROW), 10)
    variant = np.where(rng.random(units) < 0.5, "control", "treatment")
    first_seen = rng.uniform(0, 14 * 86400, units)
    unit_offset = rng.normal(0, 40, units)
    start = time.perf_counter()
    with psycopg.connect(_psycopg_url(url), autocommit=False) as conn, conn.cursor() as cur:
        with cur.copy("COPY exposures (experiment_id, phase, unit_id, variant, first_seen, last_seen, count) "
                      "FROM STDIN") as copy:
            for lo in range(0, units, CHUNK):
                hi = min(lo + CHUNK, units)
                ts = _iso(first_seen[lo:hi])
                copy.write(_csv({"e": np.full(hi - lo, exp_id), "p": np.ones(hi - lo, int),
                                 "u": np.char.add("u", np.arange(lo, hi).astype(str)), "v": variant[lo:hi],
                                 "f": ts, "l": ts, "c": np.ones(hi - lo, int)}, hi - lo))
        with cur.copy("COPY requests (request_id, experiment_id, phase, variant, engine, unit_id, in_experiment, "
                      "shadow, status, started_at, finished_at, latency_ms) FROM STDIN") as copy:
            for lo in range(0, rows, CHUNK):
                hi = min(lo + CHUNK, rows)
                copy.write(_request_chunk(rng, lo, hi, exp_id, variant, first_seen, unit_offset))
        n_events = int(units * 0.15)
        who = rng.choice(units, n_events, replace=False)
        with cur.copy("COPY events (event_id, unit_id, name, value, timestamp, received_at) FROM STDIN") as copy:
            ts = _iso(first_seen[who] + rng.uniform(60, 20 * 3600, n_events))
            copy.write(_csv({"id": np.char.add("e", np.arange(n_events).astype(str)),
                             "u": np.char.add("u", who.astype(str)), "n": np.full(n_events, "purchase"),
                             "v": rng.integers(1, 100, n_events), "t": ts, "r": ts}, n_events))
        conn.commit()
    fill_s = time.perf_counter() - start
    engine = create_engine(url)
    with engine.begin() as conn:
        rebuild(conn, exp_id)
    engine.dispose()
    rollup_s = time.perf_counter() - start - fill_s
    with psycopg.connect(_psycopg_url(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return {"units": units, "events": n_events, "fill_seconds": round(fill_s, 1),
            "rollup_rebuild_seconds": round(rollup_s, 1),
            "vacuum_analyze_seconds": round(time.perf_counter() - start - fill_s - rollup_s, 1)}


def _request_chunk(rng: np.random.Generator, lo: int, hi: int, exp_id: int, variant: np.ndarray,
                   first_seen: np.ndarray, unit_offset: np.ndarray) -> bytes:
    n = hi - lo
    unit = rng.integers(0, variant.size, n)
    v = variant[unit]
    shadow = rng.random(n) < 0.05
    u = rng.random(n)
    status = np.where(u < 0.02, "error", np.where(u < 0.03, "rejected", "ok"))
    base = np.where(v == "control", 420.0, 300.0)
    latency = np.maximum(1.0, base + unit_offset[unit] + rng.exponential(60, n)).round(3)
    started = first_seen[unit] + rng.uniform(0, 86400, n)
    iso = _iso(started)
    return _csv({"id": np.char.add("r", np.arange(lo, hi).astype(str)), "e": np.full(n, exp_id),
                 "p": np.ones(n, int), "v": np.where(shadow, "treatment", v),
                 "eng": np.where(v == "control", "v1-fp32", "v2-int4"), "u": np.char.add("u", unit.astype(str)),
                 "in": np.where(shadow, "f", "t"), "sh": np.where(shadow, "t", "f"), "st": status,
                 "s": iso, "f": iso, "lat": latency}, n)


def time_report(url: str, repeat: int) -> dict[str, Any]:
    db = Database(url)
    try:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            with db.session() as session:
                report = build_report(session, "bench", ReportOptions())
            times.append(time.perf_counter() - start)
        tracemalloc.start()
        with db.session() as session:
            build_report(session, "bench", ReportOptions())
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        db.dispose()
    return {"report_seconds_best": round(min(times), 3), "report_seconds_median": round(statistics.median(times), 3),
            "report_seconds_first": round(times[0], 3), "python_heap_peak_mb": round(peak / 2**20, 2),
            "recommendation": report["recommendation"]["action"], "quantiles": report["options"]["quantiles"],
            "units_in_report": sum(v["units"] for v in report["variants"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k and 1M rows only")
    parser.add_argument("--sizes", help="comma-separated request row counts (overrides --quick)")
    parser.add_argument("--server-url", default=SERVER_URL)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
        [100_000, 1_000_000] if args.quick else [100_000, 1_000_000, 10_000_000])
    name = f"abtest_bench_{uuid.uuid4().hex[:8]}"
    server = create_engine(args.server_url, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.server_url.rsplit("/", 1)[0] + f"/{name}"
    results = []
    try:
        upgrade(url)
        db = Database(url)
        with db.transaction() as session:
            exp = create_experiment(session, EXPERIMENT, "benchmark", lambda _: True)
            transition(session, exp, "start", "benchmark")
            exp.started_at = T0
            exp_id = exp.id
        db.dispose()
        for rows in sizes:
            with psycopg.connect(_psycopg_url(url), autocommit=True) as conn:
                conn.execute("TRUNCATE exposures, requests, events, unit_outcomes, latency_buckets, "
                             "latency_samples, shadow_outcomes")
            result = {"rows": rows, **fill(url, exp_id, rows), **time_report(url, args.repeat)}
            results.append(result)
    finally:
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()
    growth = [round(b["report_seconds_best"] / a["report_seconds_best"], 2) for a, b in zip(results, results[1:])]
    print(json.dumps({"benchmark": "report", "database": "postgresql", "sizes": results,
                      "growth_ratio_per_10x_rows": growth, "target": "<= 2 s at 10M rows, growth <= 10x per 10x"},
                     indent=2))


if __name__ == "__main__":
    main()
