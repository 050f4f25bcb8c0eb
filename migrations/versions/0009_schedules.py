"""Schedules: coverage ramp steps and start/stop times

``experiments.ramp`` holds the ramp steps (JSON: time, coverage, state, when applied),
``ramp_applied`` how many of them are done, ``ramp_next_at`` the time of the next pending one
(what the monitor's query looks at), and ``start_at`` / ``stop_at`` the times the monitor
starts and stops the experiment. Every existing experiment has no schedule. Self-contained:
no application code is imported.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("ramp", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("ramp_applied", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("ramp_next_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("start_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("stop_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        for column in ("stop_at", "start_at", "ramp_next_at", "ramp_applied", "ramp"):
            batch.drop_column(column)
