"""report rollups: unit_outcomes, latency_buckets, latency_samples, shadow_outcomes

Creates the tables and fills them from the existing request log, with the definitions of
``abtest.services.rollups`` as they were at this revision (frozen here: a migration never runs
today's application code against yesterday's schema).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

import hashlib
import math

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _experiment_fk() -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "unit_outcomes",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=100), nullable=False),
        sa.Column("unit_id", sa.String(length=200), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("latency_sum", sa.Float(), nullable=False),
        _experiment_fk(),
        sa.PrimaryKeyConstraint("experiment_id", "phase", "variant", "unit_id"),
    )
    op.create_table(
        "latency_buckets",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=100), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        _experiment_fk(),
        sa.PrimaryKeyConstraint("experiment_id", "phase", "variant", "bucket"),
    )
    op.create_table(
        "latency_samples",
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=100), nullable=False),
        sa.Column("unit_id", sa.String(length=200), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        _experiment_fk(),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_index("ix_latency_samples_experiment", "latency_samples", ["experiment_id", "phase", "variant"])
    op.create_table(
        "shadow_outcomes",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=100), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("latency_sum", sa.Float(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("output_matches", sa.Integer(), nullable=False),
        sa.Column("compared", sa.Integer(), nullable=False),
        _experiment_fk(),
        sa.PrimaryKeyConstraint("experiment_id", "phase", "variant"),
    )
    _backfill(op.get_bind())


# The sketch and the unit sample as defined at this revision (abtest.stats.sketch, rollups).
_GAMMA = (1.0 + 0.001) / (1.0 - 0.001)
_MIN_VALUE = 0.001
_SAMPLE_SALT = "abtest-latency-sample:"
_SAMPLE_SHIFT = 59  # 1 unit in 32


def _bucket(latency: float) -> int:
    return math.ceil(math.log(max(latency, _MIN_VALUE)) / math.log(_GAMMA))


def _sampled(unit_id: str) -> int:
    digest = hashlib.sha256((_SAMPLE_SALT + unit_id).encode()).digest()
    return int(int.from_bytes(digest[:8], "big") >> _SAMPLE_SHIFT == 0)


def _backfill(conn: sa.Connection) -> None:
    """The rollups of the requests logged before this revision, in SQL (SQLite gets the two
    definitions above as functions; PostgreSQL computes them natively)."""
    if conn.dialect.name == "sqlite":
        raw = conn.connection.driver_connection
        raw.create_function("rollup_bucket", 1, _bucket, deterministic=True)
        raw.create_function("rollup_sampled", 1, _sampled, deterministic=True)
        bucket, sampled = "rollup_bucket(latency_ms)", "rollup_sampled(unit_id) = 1"
    else:
        bucket = "CEIL(LN(GREATEST(latency_ms, :floor)) / :log_gamma)"
        sampled = f"get_byte(sha256(convert_to(:salt || unit_id, 'UTF8')), 0) < {2 ** (_SAMPLE_SHIFT - 56)}"
    served = "experiment_id IS NOT NULL AND in_experiment AND NOT shadow"
    params = {"floor": _MIN_VALUE, "log_gamma": math.log(_GAMMA), "salt": _SAMPLE_SALT}
    statements = (
        f"""INSERT INTO unit_outcomes (experiment_id, phase, variant, unit_id, first_at, requests, ok, errors,
                                       rejected, latency_sum)
            SELECT experiment_id, phase, variant, unit_id, MIN(started_at), COUNT(*),
                   COUNT(*) FILTER (WHERE status = 'ok'), COUNT(*) FILTER (WHERE status IN ('error', 'timeout')),
                   COUNT(*) FILTER (WHERE status = 'rejected'),
                   COALESCE(SUM(latency_ms) FILTER (WHERE status = 'ok'), 0)
            FROM requests WHERE {served} GROUP BY experiment_id, phase, variant, unit_id""",
        f"""INSERT INTO latency_buckets (experiment_id, phase, variant, bucket, count)
            SELECT experiment_id, phase, variant, {bucket}, COUNT(*)
            FROM requests WHERE {served} AND status = 'ok' GROUP BY 1, 2, 3, 4""",
        f"""INSERT INTO latency_samples (request_id, experiment_id, phase, variant, unit_id, latency_ms)
            SELECT request_id, experiment_id, phase, variant, unit_id, latency_ms
            FROM requests WHERE {served} AND status = 'ok' AND {sampled}""",
        """INSERT INTO shadow_outcomes (experiment_id, phase, variant, requests, latency_sum, errors,
                                        output_matches, compared)
            SELECT experiment_id, phase, variant, COUNT(*), SUM(latency_ms),
                   COUNT(*) FILTER (WHERE status IN ('error', 'timeout')),
                   COUNT(*) FILTER (WHERE output_match), COUNT(output_match)
            FROM requests WHERE experiment_id IS NOT NULL AND shadow GROUP BY experiment_id, phase, variant""",
    )
    for sql in statements:
        conn.execute(sa.text(sql), params)


def downgrade() -> None:
    op.drop_table("shadow_outcomes")
    op.drop_index("ix_latency_samples_experiment", table_name="latency_samples")
    op.drop_table("latency_samples")
    op.drop_table("latency_buckets")
    op.drop_table("unit_outcomes")
