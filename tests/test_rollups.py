"""Report rollups: maintained by the outcome log's writes exactly as a rebuild from the log
computes them, and both as numpy computes them from the unique rows (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps
from sqlalchemy import select

from abtest.models import LatencyBucket, LatencySample, ShadowOutcome, TtftBucket, UnitOutcome
from abtest.services.experiments import get_experiment
from abtest.reports.rollups import in_sample, insert_outcomes, rebuild
from abtest.stats import LatencySketch

T0 = datetime(2026, 11, 20, tzinfo=timezone.utc)


def random_rows(exp_id: int, rng: np.random.Generator, n: int = 600) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        shadow = rng.random() < 0.1
        rows.append({
            "request_id": str(uuid.UUID(int=int(rng.integers(0, 2**63)))), "experiment_id": exp_id,
            "phase": int(rng.choice([1, 1, 1, 2])), "variant": "treatment" if shadow or rng.random() < 0.5 else "control",
            "engine": "e", "unit_id": f"u{rng.integers(0, 120)}", "in_experiment": bool(not shadow and rng.random() < 0.9),
            "shadow": bool(shadow), "status": str(rng.choice(["ok"] * 8 + ["error", "timeout", "rejected"])),
            "started_at": T0 + timedelta(seconds=int(rng.integers(0, 10**6))), "finished_at": T0,
            "latency_ms": float(np.round(rng.lognormal(5.5, 0.7), 3)),
            "output_match": bool(rng.random() < 0.5) if shadow else None, **llm_columns(rng)})
    rows.append({**rows[0], "latency_ms": 1.0})  # a replayed id must count once (the first wins)
    rows.append({"request_id": "no-experiment", "experiment_id": None, "phase": None, "variant": None, "engine": "e",
                 "unit_id": "x", "in_experiment": False, "shadow": False, "status": "ok", "started_at": T0,
                 "finished_at": T0, "latency_ms": 3.0, "output_match": None, **llm_columns(rng)})
    return rows


def llm_columns(rng: np.random.Generator) -> dict[str, Any]:
    """The LLM and cost columns, each NULL now and then (rows logged before it, no price)."""
    tokens = int(rng.integers(1, 40))
    compute = float(np.round(rng.uniform(1, 300), 3))

    def maybe(value: Any) -> Any:
        return None if rng.random() < 0.15 else value

    return {"ttft_ms": maybe(float(np.round(rng.lognormal(3, 0.6), 3))), "completion_tokens": maybe(tokens),
            "decode_ms": maybe(float(np.round((tokens - 1) * rng.uniform(2, 9), 3))),
            "finish_reason": maybe(str(rng.choice(["stop", "length"]))), "compute_ms": maybe(compute),
            "cost": maybe(compute / 3.6e6 * 1.2)}


LLM_COUNTERS = ("ttft_sum", "ttft_n", "tokens_sum", "tokens_n", "decode_tokens", "decode_ms_sum", "decode_n",
                "truncated", "finish_n", "compute_sum", "compute_n", "cost_sum", "cost_n", "unpriced")


def llm_counts(u: dict[str, Any], r: dict[str, Any]) -> None:
    """An ok request's share of the LLM counters, by their definitions."""
    if r["ttft_ms"] is not None:
        u["ttft_sum"] += r["ttft_ms"]
        u["ttft_n"] += 1
    if r["completion_tokens"] is not None:
        u["tokens_sum"] += r["completion_tokens"]
        u["tokens_n"] += 1
        if r["decode_ms"] is not None:
            u["decode_tokens"] += r["completion_tokens"] - 1
            u["decode_ms_sum"] += r["decode_ms"]
            u["decode_n"] += 1
    if r["finish_reason"] is not None:
        u["truncated"] += r["finish_reason"] == "length"
        u["finish_n"] += 1
    if r["compute_ms"] is not None:
        u["compute_sum"] += r["compute_ms"]
        u["compute_n"] += 1
        u["unpriced"] += r["cost"] is None
    if r["cost"] is not None:
        u["cost_sum"] += r["cost"]
        u["cost_n"] += 1


def expected_rollups(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rollups from the unique rows, computed independently of the write path."""
    unique = list({r["request_id"]: r for r in reversed(rows)}.values())
    units: dict[tuple, dict[str, Any]] = {}
    buckets: dict[tuple, list[float]] = defaultdict(list)
    ttfts: dict[tuple, list[float]] = defaultdict(list)
    shadows: dict[tuple, Counter] = defaultdict(Counter)
    samples = {}
    for r in unique:
        if r["experiment_id"] is None:
            continue
        key = (r["experiment_id"], r["phase"], r["variant"])
        if r["shadow"]:
            s = shadows[key]
            s["requests"] += 1
            s["latency_sum"] += r["latency_ms"]
            s["errors"] += r["status"] in ("error", "timeout")
            s["output_matches"] += r["output_match"] is True
            s["compared"] += r["output_match"] is not None
            continue
        if not r["in_experiment"]:
            continue
        u = units.setdefault((*key, r["unit_id"]), {"first_at": r["started_at"], "requests": 0, "ok": 0,
                                                    "errors": 0, "rejected": 0, "latency_sum": 0.0,
                                                    **dict.fromkeys(LLM_COUNTERS, 0)})
        u["first_at"] = min(u["first_at"], r["started_at"])
        u["requests"] += 1
        u["ok"] += r["status"] == "ok"
        u["errors"] += r["status"] in ("error", "timeout")
        u["rejected"] += r["status"] == "rejected"
        if r["status"] == "ok":
            u["latency_sum"] += r["latency_ms"]
            buckets[key].append(r["latency_ms"])
            llm_counts(u, r)
            if r["ttft_ms"] is not None:
                ttfts[key].append(r["ttft_ms"])
            if in_sample(r["unit_id"]):
                samples[r["request_id"]] = r["ttft_ms"]
    return {"units": units, "sketches": {k: LatencySketch.from_values(v) for k, v in buckets.items()},
            "ttft_sketches": {k: LatencySketch.from_values(v) for k, v in ttfts.items()},
            "shadows": {k: dict(v) for k, v in shadows.items()}, "samples": samples}


def stored_rollups(session: Any) -> dict[str, Any]:
    units = {(u.experiment_id, u.phase, u.variant, u.unit_id): {
        "first_at": u.first_at, "requests": u.requests, "ok": u.ok, "errors": u.errors, "rejected": u.rejected,
        "latency_sum": u.latency_sum, **{c: getattr(u, c) for c in LLM_COUNTERS}}
        for u in session.scalars(select(UnitOutcome))}
    pairs: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for b in session.scalars(select(LatencyBucket)):
        pairs[(b.experiment_id, b.phase, b.variant)].append((b.bucket, b.count))
    ttft_pairs: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for b in session.scalars(select(TtftBucket)):
        ttft_pairs[(b.experiment_id, b.phase, b.variant)].append((b.bucket, b.count))
    shadows = {(s.experiment_id, s.phase, s.variant): {
        "requests": s.requests, "latency_sum": s.latency_sum, "errors": s.errors,
        "output_matches": s.output_matches, "compared": s.compared} for s in session.scalars(select(ShadowOutcome))}
    return {"units": units, "sketches": {k: LatencySketch.from_counts(v) for k, v in pairs.items()},
            "ttft_sketches": {k: LatencySketch.from_counts(v) for k, v in ttft_pairs.items()},
            "shadows": shadows, "samples": dict(session.execute(select(LatencySample.request_id,
                                                                       LatencySample.ttft_ms)).all())}


def assert_same(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert got["units"].keys() == expected["units"].keys()
    floats = ("latency_sum", "ttft_sum", "decode_ms_sum", "compute_sum", "cost_sum")
    for key, row in expected["units"].items():
        assert got["units"][key] == {**row, **{c: pytest.approx(row[c], rel=1e-9) for c in floats}}, key
    assert sum(row["unpriced"] for row in expected["units"].values()) > 0
    assert got["sketches"] == expected["sketches"]
    assert got["ttft_sketches"] == expected["ttft_sketches"]
    assert got["shadows"].keys() == expected["shadows"].keys()
    for key, row in expected["shadows"].items():
        assert got["shadows"][key] == {**row, "latency_sum": pytest.approx(row["latency_sum"], rel=1e-9)}
    assert got["samples"] == expected["samples"]


def test_batched_writes_with_replays_equal_a_rebuild_and_numpy(services, make_experiment) -> None:
    make_experiment("exp-1")
    with services.db.session() as session:
        exp_id = get_experiment(session, "exp-1").id
    rng = np.random.default_rng(5)
    rows = random_rows(exp_id, rng)
    order = rng.permutation(len(rows) - 2)  # the replay stays after its original
    shuffled = [rows[i] for i in order] + rows[-2:]
    inserted = 0
    for lo in range(0, len(shuffled), 97):
        with services.db.transaction() as session:
            inserted += insert_outcomes(session, shuffled[lo:lo + 97] + shuffled[lo:lo + 5])  # in-batch repeats
    assert inserted == len(rows) - 1
    # what the rows would give if the first copy of the replayed id had won:
    expected = expected_rollups([r for r in shuffled if not (r is rows[-2])])
    with services.db.session() as session:
        assert_same(stored_rollups(session), expected)
    with services.db.transaction() as session:
        rebuild(session.connection(), chunk=50)
    with services.db.session() as session:
        assert_same(stored_rollups(session), expected)


def test_concurrent_outcome_log_writes_keep_the_rollups_exact(services, make_experiment) -> None:
    make_experiment("exp-1")
    with services.db.session() as session:
        exp_id = get_experiment(session, "exp-1").id
    rows = random_rows(exp_id, np.random.default_rng(9), n=400)[:-2]
    chunks = [rows[i::8] for i in range(8)]
    threads = [threading.Thread(target=lambda c=c: [services.outcomes.write(r) for r in c]) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with services.db.session() as session:
        assert_same(stored_rollups(session), expected_rollups(rows))


def test_the_unit_sample_is_one_in_32_and_deterministic() -> None:
    n = 64_000
    hits = sum(in_sample(f"user-{i}") for i in range(n))
    assert sps.binomtest(hits, n, 1 / 32).pvalue > 1e-4
    assert [in_sample(f"user-{i}") for i in range(200)] == [in_sample(f"user-{i}") for i in range(200)]
