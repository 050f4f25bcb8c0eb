"""CUPED options, segment dimensions and the exposures' segment levels

``experiments.cuped`` (on unless turned off) and ``cuped_lookback_days`` choose the regression
adjustment of the report; ``experiments.dimensions`` lists the declared segment dimensions
(attribute and bounded levels). ``exposures.segments`` keeps each exposed unit's level per
dimension, set at its first exposure. Existing experiments keep CUPED on with a 14-day
lookback and no dimensions; existing exposures have no segments (NULL: "other").
Self-contained: no application code is imported.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("cuped", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.add_column(sa.Column("cuped_lookback_days", sa.Integer(), nullable=False, server_default="14"))
        batch.add_column(sa.Column("dimensions", sa.JSON(), nullable=True))
    with op.batch_alter_table("exposures") as batch:
        batch.add_column(sa.Column("segments", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("exposures") as batch:
        batch.drop_column("segments")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("dimensions")
        batch.drop_column("cuped_lookback_days")
        batch.drop_column("cuped")
