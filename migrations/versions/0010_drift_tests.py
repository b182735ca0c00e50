"""drift_tests and drift_flags: each worker's running sequential test over its accepted low-precision jobs, and
the workers it flagged (issue 20: subtle cheats caught across a worker's jobs, PROTOCOL I8).

Revision ID: 0010
Revises: 0009
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
        "drift_tests",
        sa.Column("worker", sa.String(42), nullable=False),
        sa.Column("model_id", sa.String(66), nullable=False),
        sa.Column("precision", sa.String(8), nullable=False),
        sa.Column("log_ratio", sa.Numeric(20, 6, asdecimal=False), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("worker", "model_id", "precision", name=op.f("pk_drift_tests")),
    )
    op.create_table(
        "drift_flags",
        sa.Column("job_id", sa.String(66), nullable=False),
        sa.Column("worker", sa.String(42), nullable=False),
        sa.Column("model_id", sa.String(66), nullable=False),
        sa.Column("precision", sa.String(8), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("log_ratio", sa.Numeric(20, 6, asdecimal=False), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_drift_flags")),
    )
    op.create_index("ix_drift_flags_worker_at_ms", "drift_flags", ["worker", "at_ms"])


def downgrade() -> None:
    op.drop_index("ix_drift_flags_worker_at_ms", table_name="drift_flags")
    op.drop_table("drift_flags")
    op.drop_table("drift_tests")
