"""SQLAlchemy 2 models: the whole schema of the service.

The schema is created only by Alembic migrations (``migrations/``); a test checks that these
models and the migrations agree. Imports no Flask.

Tables
    api_keys        hashed API keys with a scope (admin | viewer | sdk)
    console_signouts  web console sessions signed out before they expired (refused from then on)
    experiments     configuration and lifecycle; ``phase`` counts allocation changes
    variants        arms of an experiment: key, engine, weight, control/shadow flags
    metrics         metric definitions (built-ins are implicit; event metrics are rows)
    audit_log       append-only record of every change (who, when, what)
    exposures       one row per (experiment, phase, unit): variant, first/last seen, count
    sticky_assignments  per (experiment, unit) of a sticky experiment: the variant it keeps
    layers          per mutual-exclusion layer: its holdout share (units kept on control)
    holdout_exposures   one row per (experiment, phase, unit) of a unit kept in its layer's holdout
    exposure_ids    ids of exposures sent by locally evaluating clients (idempotency)
    requests        one row per inference request: the outcome log
    events          client-reported events (conversions, values), idempotent by event_id

Report rollups, maintained in the transaction that logs the requests (abtest.reports.rollups)
    unit_outcomes   per (experiment, phase, variant, unit): request counts, latency sum and the
                    sums and counts of the LLM and cost metrics
    latency_buckets per (experiment, phase, variant, sketch bucket): ok requests (the sketch)
    ttft_buckets    the same sketch of ok requests' time to first token
    latency_samples ok latencies (and TTFTs) of a fixed 1-in-32 hash sample of units (quantile CIs)
    shadow_outcomes per (experiment, phase, variant): the dark-launch summary

Output quality, written off the request path (abtest.services.quality)
    quality_scores  one row per scoring job: a completion scored by another engine, or why not
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Base",
    "ApiKey",
    "ConsoleSignout",
    "Experiment",
    "Variant",
    "Metric",
    "AuditEntry",
    "Exposure",
    "StickyAssignment",
    "Layer",
    "HoldoutExposure",
    "ExposureId",
    "RequestLog",
    "Event",
    "UnitOutcome",
    "LatencyBucket",
    "TtftBucket",
    "LatencySample",
    "ShadowOutcome",
    "QualityScore",
]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset when storing)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous: pass timezone-aware UTC values")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scope: Mapped[str] = mapped_column(String(16))  # "admin" | "viewer" | "sdk"
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the key
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, for display only
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class ConsoleSignout(Base):
    """A web console session signed out before its cookie expired: a copy of the cookie is
    refused from then on. Rows past ``expires_at`` (when the cookie would have expired anyway)
    are deleted as new sign-outs come."""

    __tablename__ = "console_signouts"

    session_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    signed_out_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    hypothesis: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default="draft")
    coverage: Mapped[float] = mapped_column(Float, default=1.0)
    salt: Mapped[str] = mapped_column(String(64))
    phase: Mapped[int] = mapped_column(Integer, default=1)
    targeting: Mapped[list[Any]] = mapped_column(JSON, default=list)
    forced: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    layer: Mapped[str | None] = mapped_column(String(100), index=True)
    layer_start: Mapped[float] = mapped_column(Float, default=0.0)
    layer_end: Mapped[float] = mapped_column(Float, default=1.0)
    # Guardrail breaches pause the treatment: its traffic goes to control until resumed.
    treatment_paused: Mapped[bool] = mapped_column(Boolean, default=False)
    # What the experiment is for: "superiority" (the treatment must win on the primary metric)
    # or "non_inferiority" (it must not lose by more than the primary metric's margin).
    decision: Mapped[str] = mapped_column(String(24), default="superiority", server_default="superiority")
    # Share of served requests whose completions are scored for output quality (None: none).
    quality_sample: Mapped[float | None] = mapped_column(Float)
    # Regression adjustment (CUPED) of the report on a covariate from this many days before a
    # unit's first exposure; on by default (it applies where units have history).
    cuped: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    cuped_lookback_days: Mapped[int] = mapped_column(Integer, default=14, server_default="14")
    # Segment dimensions: [{"attribute": "country", "levels": ["US", "DE"]}]; others are "other".
    dimensions: Mapped[list[Any] | None] = mapped_column(JSON, default=list)
    # Sticky bucketing: units keep their variant across weight changes (sticky_assignments).
    sticky: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Schedule (abtest.services.schedules): coverage ramp steps [{"at", "coverage", "state",
    # "applied_at"}], how many of them are done (applied or superseded), the time of the next
    # pending one (None: none), and the times the monitor starts and stops the experiment.
    ramp: Mapped[list[Any] | None] = mapped_column(JSON, default=list)
    ramp_applied: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    ramp_next_at: Mapped[datetime | None]
    start_at: Mapped[datetime | None]
    stop_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]

    variants: Mapped[list["Variant"]] = relationship(
        back_populates="experiment", order_by="Variant.position", cascade="all, delete-orphan"
    )
    metrics: Mapped[list["Metric"]] = relationship(
        back_populates="experiment", order_by="Metric.position", cascade="all, delete-orphan"
    )


class Variant(Base):
    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("experiment_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(100))
    engine: Mapped[str] = mapped_column(String(100))
    weight: Mapped[float] = mapped_column(Float)
    is_control: Mapped[bool] = mapped_column(Boolean, default=False)
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    # An engine that scores this variant's completions (e.g. its full-precision original).
    quality_reference: Mapped[str | None] = mapped_column(String(100))
    # A guardrail on that scoring: the least top-1 agreement with the reference that may ship.
    quality_min_agreement: Mapped[float | None] = mapped_column(Float)
    position: Mapped[int] = mapped_column(Integer)

    experiment: Mapped[Experiment] = relationship(back_populates="variants")


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("experiment_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    event_name: Mapped[str | None] = mapped_column(String(100))  # None for built-ins
    kind: Mapped[str] = mapped_column(String(16))  # binary | count | sum | cost_per_event | builtin
    role: Mapped[str] = mapped_column(String(16))  # primary | secondary | guardrail
    direction: Mapped[str] = mapped_column(String(16))  # increase | decrease
    attribution_window_s: Mapped[int] = mapped_column(Integer, default=86_400)
    margin: Mapped[float] = mapped_column(Float, default=0.0)  # tolerated relative harm (see validation)
    test: Mapped[str | None] = mapped_column(String(16))  # None | "equivalence" (two one-sided tests)
    position: Mapped[int] = mapped_column(Integer)

    experiment: Mapped[Experiment] = relationship(back_populates="metrics")


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50))
    changes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Exposure(Base):
    __tablename__ = "exposures"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    variant: Mapped[str] = mapped_column(String(100))
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    count: Mapped[int] = mapped_column(Integer, default=1)
    # The unit's level per declared dimension at its first exposure ({"country": "US"}).
    segments: Mapped[dict[str, str] | None] = mapped_column(JSON)


class StickyAssignment(Base):
    """The variant a unit of a sticky experiment keeps, and the phase it was assigned in."""

    __tablename__ = "sticky_assignments"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    unit_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    variant: Mapped[str] = mapped_column(String(100))
    phase: Mapped[int] = mapped_column(Integer)
    assigned_at: Mapped[datetime]


class Layer(Base):
    """A layer's settings; a layer without a row has no holdout."""

    __tablename__ = "layers"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holdout: Mapped[float] = mapped_column(Float, default=0.0)  # share of units kept on control, [0, 0.5]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class HoldoutExposure(Base):
    """A unit of a layer's holdout that an experiment of the layer answered with its control
    (not enrolled: the experiment's own analysis never sees it)."""

    __tablename__ = "holdout_exposures"
    __table_args__ = (Index("ix_holdout_exposures_layer", "layer", "unit_id"),)

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    layer: Mapped[str] = mapped_column(String(100))
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    count: Mapped[int] = mapped_column(Integer, default=1)


class ExposureId(Base):
    """Ids of client-sent exposures already counted (a resent batch counts once)."""

    __tablename__ = "exposure_ids"

    exposure_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    received_at: Mapped[datetime]


class RequestLog(Base):
    __tablename__ = "requests"
    __table_args__ = (Index("ix_requests_experiment_variant", "experiment_id", "phase", "variant"),
                      # CUPED's pre-exposure history of a unit (abtest.reports.breakdown_queries)
                      Index("ix_requests_unit_started", "unit_id", "started_at"))

    request_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    experiment_id: Mapped[int | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE")
    )
    phase: Mapped[int | None] = mapped_column(Integer)
    variant: Mapped[str | None] = mapped_column(String(100))
    engine: Mapped[str] = mapped_column(String(100))
    unit_id: Mapped[str] = mapped_column(String(200))
    in_experiment: Mapped[bool] = mapped_column(Boolean, default=False)
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))  # ok | error | timeout | rejected | unavailable | cancelled
    error_code: Mapped[str | None] = mapped_column(String(50))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    latency_ms: Mapped[float] = mapped_column(Float)  # from the request's arrival in the API to its answer
    engine_ms: Mapped[float | None] = mapped_column(Float)  # the engine's part: dispatch to reply
    queue_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(16))  # stop | length (ok requests)
    decode_ms: Mapped[float | None] = mapped_column(Float)  # first token to last token
    compute_ms: Mapped[float | None] = mapped_column(Float)  # its share of the batch's engine time
    cost: Mapped[float | None] = mapped_column(Float)  # compute_ms x the engine's price; None: no price
    output_match: Mapped[bool | None] = mapped_column(Boolean)  # shadow copies only


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_unit_name", "unit_id", "name"),)

    # 64-bit: at tens of thousands of events per second a 32-bit id runs out within days.
    # (SQLite's INTEGER PRIMARY KEY is already 64-bit and must stay INTEGER to autoincrement.)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    unit_id: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float, default=1.0)
    timestamp: Mapped[datetime]
    received_at: Mapped[datetime]
    request_id: Mapped[str | None] = mapped_column(String(36))
    experiment_key: Mapped[str | None] = mapped_column(String(100))


# --- report rollups (enrolled, non-shadow requests unless stated) --------------------------

class UnitOutcome(Base):
    __tablename__ = "unit_outcomes"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"),
                                               primary_key=True)
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant: Mapped[str] = mapped_column(String(100), primary_key=True)
    unit_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    first_at: Mapped[datetime]  # the unit's earliest request (the report's daily cohorts)
    requests: Mapped[int] = mapped_column(Integer)
    ok: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)  # error + timeout
    rejected: Mapped[int] = mapped_column(Integer)
    unavailable: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # infrastructure
    latency_sum: Mapped[float] = mapped_column(Float)  # over ok requests
    # Over ok requests whose column is recorded (not NULL): sums and their request counts.
    ttft_sum: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    ttft_n: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tokens_sum: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # completion tokens
    tokens_n: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    decode_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # tokens after the first
    decode_ms_sum: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    decode_n: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    truncated: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # finish_reason = length
    finish_n: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    compute_sum: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")  # compute_ms
    compute_n: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cost_sum: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    cost_n: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    unpriced: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # compute_ms but no cost


class LatencyBucket(Base):
    __tablename__ = "latency_buckets"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"),
                                               primary_key=True)
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant: Mapped[str] = mapped_column(String(100), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)  # abtest.stats.sketch index
    count: Mapped[int] = mapped_column(BigInteger)


class TtftBucket(Base):
    __tablename__ = "ttft_buckets"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"),
                                               primary_key=True)
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant: Mapped[str] = mapped_column(String(100), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)  # abtest.stats.sketch index
    count: Mapped[int] = mapped_column(BigInteger)


class LatencySample(Base):
    __tablename__ = "latency_samples"
    __table_args__ = (Index("ix_latency_samples_experiment", "experiment_id", "phase", "variant"),)

    request_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    phase: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(100))
    unit_id: Mapped[str] = mapped_column(String(200))
    latency_ms: Mapped[float] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)  # None when the request has none


class ShadowOutcome(Base):
    __tablename__ = "shadow_outcomes"

    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"),
                                               primary_key=True)
    phase: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant: Mapped[str] = mapped_column(String(100), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer)
    latency_sum: Mapped[float] = mapped_column(Float)  # over all shadow requests
    errors: Mapped[int] = mapped_column(Integer)
    output_matches: Mapped[int] = mapped_column(Integer)
    compared: Mapped[int] = mapped_column(Integer)


class QualityScore(Base):
    """One scoring job's outcome. ``status`` ok | failed | dropped (the scoring queue was full).
    ``method`` logprobs: ``tokens`` scored, ``agree`` of them the scorer's greedy choice,
    ``kl_sum`` the summed KL(generator || scorer); text: ``similarity`` in [0, 1]."""

    __tablename__ = "quality_scores"
    __table_args__ = (Index("ix_quality_scores_experiment", "experiment_id", "phase", "comparison", "variant"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(36))
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    phase: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(100))  # whose quality the row measures
    unit_id: Mapped[str] = mapped_column(String(200))
    comparison: Mapped[str] = mapped_column(String(24))  # treatment_vs_control | reference
    generator: Mapped[str] = mapped_column(String(100))  # the engine that wrote the completion
    scorer: Mapped[str] = mapped_column(String(100))  # the engine that scored it
    method: Mapped[str | None] = mapped_column(String(16))  # logprobs | text (None unless ok)
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(50))
    tokens: Mapped[int | None] = mapped_column(Integer)
    agree: Mapped[int | None] = mapped_column(Integer)
    kl_sum: Mapped[float | None] = mapped_column(Float)
    similarity: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime]
