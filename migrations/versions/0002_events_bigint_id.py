"""events.id becomes 64-bit

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return  # INTEGER PRIMARY KEY is already a 64-bit rowid in SQLite
    op.alter_column("events", "id", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.alter_column("events", "id", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
