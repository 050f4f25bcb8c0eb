"""Sticky bucketing and idempotent client exposures

``experiments.sticky`` (false for every existing experiment: they keep re-randomizing on a
weight change, as before). ``sticky_assignments`` holds one row per (experiment, unit) of a
sticky experiment: the variant the unit keeps and the phase it was assigned in, written with
its first exposure. ``exposure_ids`` records the ids of exposures sent by locally evaluating
clients, so a resent batch is counted once. Self-contained: no application code is imported.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("sticky", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "sticky_assignments",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.String(200), nullable=False),
        sa.Column("variant", sa.String(100), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", "unit_id"),
    )
    op.create_table(
        "exposure_ids",
        sa.Column("exposure_id", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("exposure_id"),
    )


def downgrade() -> None:
    op.drop_table("exposure_ids")
    op.drop_table("sticky_assignments")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("sticky")
