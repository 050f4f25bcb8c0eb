"""An index on the request log by unit and time

CUPED on the built-in request metrics reads each exposed unit's requests in the lookback before
its first exposure (``requests`` joined to ``exposures`` on ``unit_id``, bounded by
``started_at``); ``ix_requests_unit_started`` serves that join as ``ix_events_unit_name`` serves
the event metrics' covariates, instead of a scan of the whole log. Self-contained: no application
code is imported.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_requests_unit_started", "requests", ["unit_id", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_requests_unit_started", table_name="requests")
