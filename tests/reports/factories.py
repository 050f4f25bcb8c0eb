"""Factories that write exposures, requests and events straight into the tables (Core inserts;
requests through the outcome log's own insert, so the report rollups follow).

They build data with known values so that tests can recompute every number of a report from
the same raw rows with numpy/scipy.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
from sqlalchemy import Engine, create_engine, insert, select

from abtest.models import Event, Exposure, Experiment
from abtest.reports.rollups import insert_outcomes

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


@dataclass
class Log:
    """What a test inserted, kept for the independent computation."""

    exposures: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


class Factory:
    """Insert rows for one experiment (by key) through SQLAlchemy Core."""

    def __init__(self, url: str, key: str) -> None:
        self.engine: Engine = create_engine(url)
        with self.engine.connect() as conn:
            row = conn.execute(select(Experiment.id, Experiment.phase).where(Experiment.key == key)).one()
        self.key, self.experiment_id, self.phase = key, row[0], row[1]
        self.log = Log()

    def close(self) -> None:
        self.engine.dispose()

    def exposure(self, unit: str, variant: str, first_seen: datetime = T0, *, phase: int | None = None,
                 segments: dict[str, str] | None = None) -> None:
        row = {"experiment_id": self.experiment_id, "phase": self.phase if phase is None else phase, "unit_id": unit,
               "variant": variant, "first_seen": first_seen, "last_seen": first_seen, "count": 1,
               "segments": segments}
        self.log.exposures.append(row)

    def request(self, unit: str, variant: str, latency_ms: float, status: str = "ok", *,
                at: datetime = T0, shadow: bool = False, in_experiment: bool = True,
                phase: int | None = None, output_match: bool | None = None,
                request_id: str | None = None, **llm: Any) -> str:
        """``llm``: the row's LLM and cost columns (``ttft_ms``, ``completion_tokens``,
        ``decode_ms``, ``finish_reason``, ``compute_ms``, ``cost``); NULL when not given, as
        in rows logged before they were recorded."""
        rid = request_id or str(uuid.uuid4())
        self.log.requests.append({
            "request_id": rid, "experiment_id": self.experiment_id, "phase": self.phase if phase is None else phase,
            "variant": variant, "engine": "v2-int4" if variant != "control" else "v1-fp32",
            "unit_id": unit, "in_experiment": in_experiment, "shadow": shadow, "status": status,
            "error_code": None if status == "ok" else status, "started_at": at,
            "finished_at": at + timedelta(milliseconds=latency_ms), "latency_ms": float(latency_ms),
            "queue_ms": None, "ttft_ms": None, "prompt_tokens": 10, "completion_tokens": None,
            "batch_size": 1, "output_match": output_match, "finish_reason": None, "decode_ms": None,
            "compute_ms": None, "cost": None, **llm})
        return rid

    def event(self, unit: str, name: str, at: datetime, value: float = 1.0, *,
              request_id: str | None = None, experiment_key: str | None = None) -> None:
        self.log.events.append({
            "event_id": str(uuid.uuid4()), "unit_id": unit, "name": name, "value": float(value),
            "timestamp": at, "received_at": at, "request_id": request_id, "experiment_key": experiment_key})

    def flush(self) -> None:
        """Write everything recorded so far (the log keeps it for the test's own computation)."""
        with self.engine.begin() as conn:
            for model, rows in ((Exposure, self.log.exposures), (Event, self.log.events)):
                if rows:
                    conn.execute(insert(model), rows)
            insert_outcomes(conn, self.log.requests)  # the request log and its report rollups


def populate(f: Factory, units: Sequence[tuple[str, str]], rng: np.random.Generator, *,
             lat_mean: dict[str, float], err_p: dict[str, float], conv_p: dict[str, float],
             event: str = "purchase", days: int = 3) -> None:
    """Exposures, 1-8 requests per unit (unit-level latency offsets: clustered), conversions."""
    for i, (unit, variant) in enumerate(units):
        seen = T0 + timedelta(days=i % days, minutes=i % 50)
        f.exposure(unit, variant, seen)
        offset = rng.normal(0, 40)
        for k in range(int(rng.integers(1, 9))):
            at = seen + timedelta(seconds=30 * k + 1)
            if rng.random() < err_p[variant]:
                f.request(unit, variant, rng.uniform(5, 50), rng.choice(["error", "timeout"]), at=at)
            else:
                f.request(unit, variant, max(1.0, lat_mean[variant] + offset + rng.exponential(60)), at=at)
        if rng.random() < 0.05:
            f.request(unit, variant, 2.0, "rejected", at=seen + timedelta(seconds=5))
        if rng.random() < conv_p[variant]:
            f.event(unit, event, seen + timedelta(hours=1), value=float(rng.integers(1, 5)))


def simple(f: Factory, rng: np.random.Generator, n: dict[str, int], conv: dict[str, float],
           err: dict[str, float], lat: dict[str, float]) -> None:
    """``n[v]`` units per variant, two requests each, Bernoulli conversions and errors."""
    for variant, count in n.items():
        for i in range(count):
            unit = f"{variant}-{i}"
            f.exposure(unit, variant, T0)
            for k in range(2):
                status = "error" if rng.random() < err[variant] else "ok"
                f.request(unit, variant, lat[variant] + rng.normal(0, 20), status, at=T0 + timedelta(minutes=k))
            if rng.random() < conv[variant]:
                f.event(unit, "purchase", T0 + timedelta(hours=1))
