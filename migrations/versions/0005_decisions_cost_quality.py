"""Decision policies, cost and LLM metrics, output quality

``experiments.decision`` says what the experiment is for (superiority, the default, or
non-inferiority); ``experiments.quality_sample`` and ``variants.quality_reference`` configure
the scoring of live completions; ``metrics.test`` marks an equivalence guardrail. The request
log gains ``finish_reason``, ``decode_ms``, ``compute_ms`` (the request's share of its
batches' engine time) and ``cost``. Rows logged before this revision keep NULL there and are
left out of the metrics that read them. Self-contained: no application code is imported.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("experiments", sa.Column("decision", sa.String(24), nullable=False,
                                           server_default="superiority"))
    op.add_column("experiments", sa.Column("quality_sample", sa.Float(), nullable=True))
    op.add_column("variants", sa.Column("quality_reference", sa.String(100), nullable=True))
    op.add_column("variants", sa.Column("quality_min_agreement", sa.Float(), nullable=True))
    op.add_column("metrics", sa.Column("test", sa.String(16), nullable=True))
    for name, type_ in (("finish_reason", sa.String(16)), ("decode_ms", sa.Float()),
                        ("compute_ms", sa.Float()), ("cost", sa.Float())):
        op.add_column("requests", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        for name in ("cost", "compute_ms", "decode_ms", "finish_reason"):
            batch.drop_column(name)
    with op.batch_alter_table("metrics") as batch:
        batch.drop_column("test")
    with op.batch_alter_table("variants") as batch:
        batch.drop_column("quality_min_agreement")
        batch.drop_column("quality_reference")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("quality_sample")
        batch.drop_column("decision")
