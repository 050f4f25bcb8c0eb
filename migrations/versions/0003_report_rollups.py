"""report rollups: unit_outcomes, latency_buckets, latency_samples, shadow_outcomes

Creates the tables and fills them from the existing request log (abtest.services.rollups.rebuild).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

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
    # The rollups of requests logged before this revision: the same code path as live writes.
    from abtest.services.rollups import rebuild

    rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_table("shadow_outcomes")
    op.drop_index("ix_latency_samples_experiment", table_name="latency_samples")
    op.drop_table("latency_samples")
    op.drop_table("latency_buckets")
    op.drop_table("unit_outcomes")
