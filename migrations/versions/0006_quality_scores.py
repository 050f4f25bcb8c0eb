"""Output quality scores

``quality_scores`` holds one row per scoring job of a sampled live completion: which engine
generated it, which scored it, how (``logprobs`` teacher-forced, or ``text`` similarity when
the tokenizers differ), and the job's status (ok, failed, or dropped because the scoring queue
was full). Nothing existed before this revision, so there is nothing to backfill.
Self-contained: no application code is imported.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quality_scores",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(100), nullable=False),
        sa.Column("unit_id", sa.String(200), nullable=False),
        sa.Column("comparison", sa.String(24), nullable=False),
        sa.Column("generator", sa.String(100), nullable=False),
        sa.Column("scorer", sa.String(100), nullable=False),
        sa.Column("method", sa.String(16), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(50), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=True),
        sa.Column("agree", sa.Integer(), nullable=True),
        sa.Column("kl_sum", sa.Float(), nullable=True),
        sa.Column("similarity", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("quality_scores") as batch:
        batch.create_index("ix_quality_scores_experiment", ["experiment_id", "phase", "comparison", "variant"],
                           unique=False)


def downgrade() -> None:
    with op.batch_alter_table("quality_scores") as batch:
        batch.drop_index("ix_quality_scores_experiment")
    op.drop_table("quality_scores")
