"""Infrastructure failures apart from engine errors; the engine's share of a request's latency

``requests.engine_ms`` (dispatch to reply) sits beside ``latency_ms``, which now runs from the
request's arrival in the API. ``unit_outcomes.unavailable`` counts requests that failed for the
infrastructure (status ``unavailable``: broker unreachable, engine still loading), which the
report keeps out of the engine's error rate. Nothing logged before this revision has that
status, so there is nothing to backfill. Self-contained: no application code is imported.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("engine_ms", sa.Float(), nullable=True))
    op.add_column("unit_outcomes", sa.Column("unavailable", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("unit_outcomes") as batch:
        batch.drop_column("unavailable")
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("engine_ms")
