"""Web console sign-outs

``console_signouts`` holds the ids of web console sessions signed out before their cookie
expired, so a copy of such a cookie is refused. Self-contained: no application code is imported.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_signouts",
        sa.Column("session_id", sa.String(32), nullable=False),
        sa.Column("signed_out_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_id"),
    )
    op.create_index("ix_console_signouts_expires_at", "console_signouts", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_console_signouts_expires_at", table_name="console_signouts")
    op.drop_table("console_signouts")
