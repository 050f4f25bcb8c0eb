"""Report rollups: what reports read instead of scanning the request log.

A report over millions of requests must not sort or group every request. The transaction that
logs requests (:func:`insert_outcomes`, called by the outcome log's group commit) also adds them
to five small tables (see :mod:`abtest.models`):

``unit_outcomes``    one row per (experiment, phase, variant, unit) of enrolled, non-shadow
                     requests: first request time, requests, ok, errors (error + timeout),
                     rejected, unavailable (infrastructure), sum of ok latencies, and over the
                     ok requests whose column is recorded (not NULL) the sums and counts of the
                     LLM and cost metrics (:data:`OK_SUMS`). The ratio metrics of
                     :mod:`abtest.reports.catalogue` and their daily cohorts need nothing else.
``latency_buckets``  the :class:`~abtest.stats.LatencySketch` of ok latencies per variant:
                     quantiles and their CI order statistics to within 0.1 % relative.
``ttft_buckets``     the same sketch of ok requests' time to first token (when recorded).
``latency_samples``  the ok latencies and TTFTs of the units in a fixed hash sample (1 unit in
                     32): the per-unit indicator sums of the cluster-aware quantile CI (step 2
                     of :mod:`abtest.stats.quantiles`) for experiments too large to scan.
``shadow_outcomes``  per variant: dark-launch copies, their latency sum, errors and agreement.

Only rows actually inserted count (``INSERT ... ON CONFLICT DO NOTHING RETURNING``), so a
replayed request id changes nothing. Upserts go in key order, so concurrent committers (several
API processes) wait on each other's row locks instead of deadlocking. :func:`rebuild` recomputes
every rollup from the log (the migration that introduced them and the report benchmark use it).
Which statuses count how is :mod:`abtest.reports.statuses`; the SQL forms of the sketch bucket
and of the unit sample are :data:`BUCKET_SQL` and :data:`SAMPLE_SQL` (tested against
:func:`abtest.stats.bucket_index` and :func:`in_sample` on PostgreSQL).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ..models import LatencyBucket, LatencySample, RequestLog, ShadowOutcome, TtftBucket, UnitOutcome
from ..stats import bucket_index
from ..stats.sketch import GAMMA, MIN_VALUE
from . import statuses as ST

__all__ = ["SAMPLE_SHIFT", "BUCKET_SQL", "SAMPLE_SQL", "SQL_PARAMS", "OK_SUMS", "SKETCHES", "Deltas", "in_sample",
           "deltas", "apply", "insert_outcomes", "rebuild"]

SAMPLE_SHIFT = 59  # a unit is sampled when the top 64 - 59 = 5 bits of its hash are 0: 1 in 32
_SAMPLE_SALT = b"abtest-latency-sample:"
# The per-unit sums over ok requests, each counted when its SQL condition holds (the column is
# recorded): rollup column -> (condition, value) in SQL; :func:`_ok_sums` is the same in Python.
OK_SUMS: dict[str, tuple[str, str]] = {
    "ttft_sum": ("ttft_ms IS NOT NULL", "ttft_ms"),
    "ttft_n": ("ttft_ms IS NOT NULL", "1"),
    "tokens_sum": ("completion_tokens IS NOT NULL", "completion_tokens"),
    "tokens_n": ("completion_tokens IS NOT NULL", "1"),
    "decode_tokens": ("decode_ms IS NOT NULL AND completion_tokens IS NOT NULL",
                      "CASE WHEN completion_tokens > 1 THEN completion_tokens - 1 ELSE 0 END"),
    "decode_ms_sum": ("decode_ms IS NOT NULL AND completion_tokens IS NOT NULL", "decode_ms"),
    "decode_n": ("decode_ms IS NOT NULL AND completion_tokens IS NOT NULL", "1"),
    "truncated": ("finish_reason = 'length'", "1"),
    "finish_n": ("finish_reason IS NOT NULL", "1"),
    "compute_sum": ("compute_ms IS NOT NULL", "compute_ms"),
    "compute_n": ("compute_ms IS NOT NULL", "1"),
    "cost_sum": ("cost IS NOT NULL", "cost"),
    "cost_n": ("cost IS NOT NULL", "1"),
    "unpriced": ("compute_ms IS NOT NULL AND cost IS NULL", "1"),
}
_UNIT_COUNTERS = ("requests", "ok", "errors", "rejected", "unavailable", "latency_sum", *OK_SUMS)
# The sketches: request column -> its bucket table (quantile sources of the catalogue).
SKETCHES: dict[str, Any] = {"latency_ms": LatencyBucket, "ttft_ms": TtftBucket}
_LOG_COLUMNS = ("request_id", "experiment_id", "phase", "variant", "unit_id", "in_experiment", "shadow", "status",
                "started_at", "latency_ms", "output_match", "ttft_ms", "completion_tokens", "decode_ms",
                "finish_reason", "compute_ms", "cost")
_SHADOW_COUNTERS = ("requests", "latency_sum", "errors", "output_matches", "compared")
# bucket_index() in SQL (PostgreSQL), of a latency column, and in_sample() of a unit id column:
# the top 64 - SAMPLE_SHIFT (<= 8) bits of the hash are 0. Parameters: SQL_PARAMS.
BUCKET_SQL = "CEIL(LN(GREATEST({latency}, :floor)) / :log_gamma)"
SAMPLE_SQL = f"get_byte(sha256(convert_to(:salt || {{unit}}, 'UTF8')), 0) < {2 ** (SAMPLE_SHIFT - 56)}"
SQL_PARAMS = {"floor": MIN_VALUE, "log_gamma": math.log(GAMMA), "salt": _SAMPLE_SALT.decode()}


def in_sample(unit_id: str) -> bool:
    """Whether a unit's latencies go to ``latency_samples`` (independent of assignment)."""
    digest = hashlib.sha256(_SAMPLE_SALT + unit_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> SAMPLE_SHIFT == 0


@dataclass
class Deltas:
    """Rollup increments of a batch of request rows, aggregated per rollup key."""

    units: dict[tuple[int, int, str, str], dict[str, Any]] = field(default_factory=dict)
    # per sketch column (SKETCHES): (experiment, phase, variant, bucket) -> ok requests
    buckets: dict[str, dict[tuple[int, int, str, int], int]] = field(
        default_factory=lambda: {c: {} for c in SKETCHES})
    samples: list[dict[str, Any]] = field(default_factory=list)
    shadows: dict[tuple[int, int, str], dict[str, Any]] = field(default_factory=dict)


def deltas(rows: Iterable[Mapping[str, Any]]) -> Deltas:
    """What ``rows`` (request rows as dicts) add to each rollup."""
    out = Deltas()
    ok_values: dict[str, list[tuple[tuple[int, int, str], float]]] = {c: [] for c in SKETCHES}
    for r in rows:
        if r.get("experiment_id") is None:
            continue
        status, latency = r["status"], float(r["latency_ms"])
        if r.get("shadow"):
            _add_shadow(out, r, status, latency)
        elif r.get("in_experiment"):
            _add_unit(out, r, status, latency)
            if status == ST.OK:
                for column, values in ok_values.items():
                    if r.get(column) is not None:
                        values.append(((r["experiment_id"], r["phase"], r["variant"]), float(r[column])))
                if in_sample(r["unit_id"]):
                    out.samples.append({**{k: r[k] for k in ("request_id", "experiment_id", "phase", "variant",
                                                             "unit_id", "latency_ms")}, "ttft_ms": r.get("ttft_ms")})
    for column, values in ok_values.items():
        if values:
            counts = out.buckets[column]
            for (key, _), b in zip(values, bucket_index([x for _, x in values]).tolist()):
                counts[(*key, b)] = counts.get((*key, b), 0) + 1
    return out


def _ok_sums(r: Mapping[str, Any]) -> dict[str, float]:
    """The OK_SUMS increments of one ok request row (the Python form of their SQL)."""
    ttft, tokens, decode, reason = r.get("ttft_ms"), r.get("completion_tokens"), r.get("decode_ms"), r.get(
        "finish_reason")
    compute, cost = r.get("compute_ms"), r.get("cost")
    out = dict.fromkeys(OK_SUMS, 0.0)
    if ttft is not None:
        out.update(ttft_sum=float(ttft), ttft_n=1)
    if tokens is not None:
        out.update(tokens_sum=int(tokens), tokens_n=1)
        if decode is not None:
            out.update(decode_tokens=max(int(tokens) - 1, 0), decode_ms_sum=float(decode), decode_n=1)
    if reason is not None:
        out.update(truncated=int(reason == "length"), finish_n=1)
    if compute is not None:
        out.update(compute_sum=float(compute), compute_n=1, unpriced=int(cost is None))
    if cost is not None:
        out.update(cost_sum=float(cost), cost_n=1)
    return out


def _add_unit(out: Deltas, r: Mapping[str, Any], status: str, latency: float) -> None:
    key = (r["experiment_id"], r["phase"], r["variant"], r["unit_id"])
    row = out.units.get(key)
    if row is None:
        row = out.units[key] = {"experiment_id": key[0], "phase": key[1], "variant": key[2], "unit_id": key[3],
                                "first_at": r["started_at"], **dict.fromkeys(_UNIT_COUNTERS, 0)}
    row["first_at"] = min(row["first_at"], r["started_at"])
    row["requests"] += 1
    row["ok"] += status == ST.OK
    row["errors"] += ST.is_error(status)
    row["rejected"] += status == ST.REJECTED
    row["unavailable"] += status == ST.UNAVAILABLE
    row["latency_sum"] += latency if status == ST.OK else 0.0
    if status == ST.OK:
        for name, value in _ok_sums(r).items():
            row[name] += value


def _add_shadow(out: Deltas, r: Mapping[str, Any], status: str, latency: float) -> None:
    key = (r["experiment_id"], r["phase"], r["variant"])
    row = out.shadows.get(key)
    if row is None:
        row = out.shadows[key] = {"experiment_id": key[0], "phase": key[1], "variant": key[2],
                                  **dict.fromkeys(_SHADOW_COUNTERS, 0)}
    row["requests"] += 1
    row["latency_sum"] += latency
    row["errors"] += ST.is_error(status)
    row["output_matches"] += r.get("output_match") is True
    row["compared"] += r.get("output_match") is not None


@functools.lru_cache(maxsize=64)
def _upsert(dialect: str, model: Any, keys: tuple[str, ...], add: tuple[str, ...],
            earliest: str | None = None) -> Any:
    """INSERT that adds ``add`` columns into an existing row (and keeps the earliest time); built
    once per dialect and table (statements are immutable; each commit only binds new rows)."""
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(model)
    table = model.__table__
    set_ = {c: table.c[c] + stmt.excluded[c] for c in add}
    if earliest:
        least = func.min if dialect == "sqlite" else func.least
        set_[earliest] = least(table.c[earliest], stmt.excluded[earliest])
    return stmt.on_conflict_do_update(index_elements=list(keys), set_=set_)


def _dialect(conn: Connection | Session) -> str:
    return conn.get_bind().dialect.name if isinstance(conn, Session) else conn.dialect.name


@functools.lru_cache(maxsize=4)
def _new_samples(dialect: str) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(LatencySample).on_conflict_do_nothing(index_elements=["request_id"])


def apply(conn: Connection | Session, d: Deltas) -> None:
    """Upsert ``d`` into the rollup tables, in key order (inside the caller's transaction)."""
    dialect = _dialect(conn)
    if d.units:
        conn.execute(_upsert(dialect, UnitOutcome, ("experiment_id", "phase", "variant", "unit_id"),
                             _UNIT_COUNTERS, "first_at"), [d.units[k] for k in sorted(d.units)])
    for column, counts in d.buckets.items():
        if counts:
            rows = [{"experiment_id": e, "phase": p, "variant": v, "bucket": b, "count": n}
                    for (e, p, v, b), n in sorted(counts.items())]
            conn.execute(_upsert(dialect, SKETCHES[column], ("experiment_id", "phase", "variant", "bucket"),
                                 ("count",)), rows)
    if d.samples:
        conn.execute(_new_samples(dialect), d.samples)
    if d.shadows:
        conn.execute(_upsert(dialect, ShadowOutcome, ("experiment_id", "phase", "variant"), _SHADOW_COUNTERS),
                     [d.shadows[k] for k in sorted(d.shadows)])


@functools.lru_cache(maxsize=4)
def _new_requests(dialect: str) -> Any:
    """INSERT of request rows that skips ids already stored, returning the ids it inserted."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(RequestLog).on_conflict_do_nothing(index_elements=["request_id"]).returning(RequestLog.request_id)


def insert_outcomes(conn: Connection | Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert request rows whose id is new, add them to the rollups; returns how many were new."""
    unique: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        unique.setdefault(row["request_id"], row)
    if not unique:
        return 0
    inserted = set(conn.execute(_new_requests(_dialect(conn)), list(unique.values())).scalars())
    apply(conn, deltas(row for rid, row in unique.items() if rid in inserted))
    return len(inserted)


def rebuild(conn: Connection, experiment_id: int | None = None, chunk: int = 100_000) -> None:
    """Recompute the rollups of one experiment (or all) from the request log.

    PostgreSQL runs it as five ``INSERT ... SELECT`` (the same definitions in SQL: ``ln`` for
    the sketch bucket, ``sha256`` for the unit sample); elsewhere the log is streamed through
    :func:`deltas` in chunks.
    """
    tables = (UnitOutcome, *SKETCHES.values(), LatencySample, ShadowOutcome)
    for model in tables:
        stmt = delete(model)
        conn.execute(stmt if experiment_id is None else stmt.where(model.experiment_id == experiment_id))
    if conn.dialect.name == "postgresql":
        _rebuild_sql(conn, experiment_id)
        return
    columns = [RequestLog.__table__.c[c] for c in _LOG_COLUMNS]
    query = select(*columns).where(RequestLog.experiment_id.is_not(None))
    if experiment_id is not None:
        query = query.where(RequestLog.experiment_id == experiment_id)
    result = conn.execute(query, execution_options={"yield_per": chunk})
    for part in result.mappings().partitions():
        apply(conn, deltas(part))


def _rebuild_sql(conn: Connection, experiment_id: int | None) -> None:
    scope = "experiment_id IS NOT NULL" + ("" if experiment_id is None else " AND experiment_id = :e")
    served = f"{scope} AND in_experiment AND NOT shadow"
    ok = f"status = '{ST.OK}'"
    params = {"e": experiment_id, **SQL_PARAMS}
    ok_sums = "".join(f",\n                   COALESCE(SUM({value}) FILTER (WHERE {ok} AND {cond}), 0)"
                      for cond, value in OK_SUMS.values())
    sketches = tuple(
        f"""INSERT INTO {model.__tablename__} (experiment_id, phase, variant, bucket, count)
            SELECT experiment_id, phase, variant, {BUCKET_SQL.format(latency=column)}, COUNT(*)
            FROM requests WHERE {served} AND {ok} AND {column} IS NOT NULL GROUP BY 1, 2, 3, 4"""
        for column, model in SKETCHES.items())
    statements = (
        f"""INSERT INTO unit_outcomes (experiment_id, phase, variant, unit_id, first_at, requests, ok, errors,
                                       rejected, unavailable, latency_sum, {', '.join(OK_SUMS)})
            SELECT experiment_id, phase, variant, unit_id, MIN(started_at), COUNT(*),
                   COUNT(*) FILTER (WHERE {ok}), COUNT(*) FILTER (WHERE {ST.sql_error()}),
                   COUNT(*) FILTER (WHERE status = '{ST.REJECTED}'),
                   COUNT(*) FILTER (WHERE status = '{ST.UNAVAILABLE}'),
                   COALESCE(SUM(latency_ms) FILTER (WHERE {ok}), 0){ok_sums}
            FROM requests WHERE {served} GROUP BY experiment_id, phase, variant, unit_id""",
        *sketches,
        f"""INSERT INTO latency_samples (request_id, experiment_id, phase, variant, unit_id, latency_ms, ttft_ms)
            SELECT request_id, experiment_id, phase, variant, unit_id, latency_ms, ttft_ms
            FROM requests WHERE {served} AND {ok} AND {SAMPLE_SQL.format(unit="unit_id")}""",
        f"""INSERT INTO shadow_outcomes (experiment_id, phase, variant, requests, latency_sum, errors,
                                         output_matches, compared)
            SELECT experiment_id, phase, variant, COUNT(*), SUM(latency_ms),
                   COUNT(*) FILTER (WHERE {ST.sql_error()}), COUNT(*) FILTER (WHERE output_match),
                   COUNT(output_match)
            FROM requests WHERE {scope} AND shadow GROUP BY experiment_id, phase, variant""",
    )
    for sql in statements:
        conn.execute(text(sql), params)
