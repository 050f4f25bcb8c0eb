"""Layer holdouts

``layers`` holds a layer's holdout share (the share of its units that every experiment of
the layer keeps on its control); a layer without a row has none. ``holdout_exposures`` has
one row per (experiment, phase, unit) of a unit answered as part of its layer's holdout, so
the holdout's population is known (the cumulative impact report compares it with the units
the layer's experiments enrolled). Self-contained: no application code is imported.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "layers",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("holdout", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "holdout_exposures",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.String(200), nullable=False),
        sa.Column("layer", sa.String(100), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", "phase", "unit_id"),
    )
    op.create_index("ix_holdout_exposures_layer", "holdout_exposures", ["layer", "unit_id"])


def downgrade() -> None:
    op.drop_index("ix_holdout_exposures_layer", table_name="holdout_exposures")
    op.drop_table("holdout_exposures")
    op.drop_table("layers")
