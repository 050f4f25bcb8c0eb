"""Decision policies, cost and LLM metrics, output quality

``experiments.decision`` says what the experiment is for (superiority, the default, or
non-inferiority); ``experiments.quality_sample`` and ``variants.quality_reference`` configure
the scoring of live completions; ``metrics.test`` marks an equivalence guardrail. The request
log gains ``finish_reason``, ``decode_ms``, ``compute_ms`` (the request's share of its
batches' engine time) and ``cost``. Rows logged before this revision keep NULL there and are
left out of the metrics that read them. The report rollups gain the sums and counts of those
metrics (``unit_outcomes``), a time-to-first-token sketch (``ttft_buckets``) and the sampled
units' TTFTs (``latency_samples.ttft_ms``); the time to first token and the completion tokens
were logged before, so their rollups are filled from the existing log. Self-contained: no
application code is imported.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import math

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
    for name, type_ in _UNIT_COLUMNS:
        op.add_column("unit_outcomes", sa.Column(name, type_, nullable=False, server_default="0"))
    op.add_column("latency_samples", sa.Column("ttft_ms", sa.Float(), nullable=True))
    op.create_table(
        "ttft_buckets",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=100), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", "phase", "variant", "bucket"),
    )
    _backfill(op.get_bind())


_UNIT_COLUMNS = (("ttft_sum", sa.Float()), ("ttft_n", sa.Integer()), ("tokens_sum", sa.BigInteger()),
                 ("tokens_n", sa.Integer()), ("decode_tokens", sa.BigInteger()), ("decode_ms_sum", sa.Float()),
                 ("decode_n", sa.Integer()), ("truncated", sa.Integer()), ("finish_n", sa.Integer()),
                 ("compute_sum", sa.Float()), ("compute_n", sa.Integer()), ("cost_sum", sa.Float()),
                 ("cost_n", sa.Integer()), ("unpriced", sa.Integer()))
# The sketch as defined at this revision (abtest.stats.sketch).
_GAMMA = (1.0 + 0.001) / (1.0 - 0.001)
_MIN_VALUE = 0.001


def _bucket(value: float) -> int:
    return math.ceil(math.log(max(value, _MIN_VALUE)) / math.log(_GAMMA))


def _backfill(conn: sa.Connection) -> None:
    """The TTFT and completion-token rollups of the requests logged before this revision (the
    columns this revision adds are NULL there, so their counters stay 0)."""
    if conn.dialect.name == "sqlite":
        conn.connection.driver_connection.create_function("rollup_bucket", 1, _bucket, deterministic=True)
        bucket = "rollup_bucket(ttft_ms)"
    else:
        bucket = "CEIL(LN(GREATEST(ttft_ms, :floor)) / :log_gamma)"
    ok = "experiment_id IS NOT NULL AND in_experiment AND NOT shadow AND status = 'ok'"
    params = {"floor": _MIN_VALUE, "log_gamma": math.log(_GAMMA)}
    statements = (
        f"""UPDATE unit_outcomes SET ttft_sum = s.ttft_sum, ttft_n = s.ttft_n, tokens_sum = s.tokens_sum,
                                     tokens_n = s.tokens_n
            FROM (SELECT experiment_id, phase, variant, unit_id, COALESCE(SUM(ttft_ms), 0) AS ttft_sum,
                         COUNT(ttft_ms) AS ttft_n, COALESCE(SUM(completion_tokens), 0) AS tokens_sum,
                         COUNT(completion_tokens) AS tokens_n
                  FROM requests WHERE {ok} GROUP BY experiment_id, phase, variant, unit_id) AS s
            WHERE unit_outcomes.experiment_id = s.experiment_id AND unit_outcomes.phase = s.phase
              AND unit_outcomes.variant = s.variant AND unit_outcomes.unit_id = s.unit_id""",
        f"""INSERT INTO ttft_buckets (experiment_id, phase, variant, bucket, count)
            SELECT experiment_id, phase, variant, {bucket}, COUNT(*)
            FROM requests WHERE {ok} AND ttft_ms IS NOT NULL GROUP BY 1, 2, 3, 4""",
        """UPDATE latency_samples SET ttft_ms = r.ttft_ms FROM requests AS r
            WHERE r.request_id = latency_samples.request_id AND r.ttft_ms IS NOT NULL""",
    )
    for sql in statements:
        conn.execute(sa.text(sql), params)


def downgrade() -> None:
    op.drop_table("ttft_buckets")
    with op.batch_alter_table("latency_samples") as batch:
        batch.drop_column("ttft_ms")
    with op.batch_alter_table("unit_outcomes") as batch:
        for name, _ in reversed(_UNIT_COLUMNS):
            batch.drop_column(name)
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
