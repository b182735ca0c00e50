"""samples: the dataset rows of accepted jobs, the journal indexes of their `sample` entries, and task_stats.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_SAMPLE = sa.text("kind = 'sample'")


def upgrade() -> None:
    op.create_table(
        "samples",
        sa.Column("job_id", sa.String(66), nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("task_source", sa.String(256), nullable=False),
        sa.Column("model_id", sa.String(66), nullable=False),
        sa.Column("prompt_text", sa.Text(), nullable=True),
        sa.Column("prompt_token_ids", sa.Text(), nullable=False),
        sa.Column("completion_text", sa.Text(), nullable=False),
        sa.Column("completion_token_ids", sa.Text(), nullable=False),
        sa.Column("sampling", sa.Text(), nullable=False),
        sa.Column("seed", sa.String(20), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("checker", sa.String(32), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("verdict", sa.String(24), nullable=False),
        sa.Column("verdict_figures", sa.Text(), nullable=True),
        sa.Column("digest", sa.String(66), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_samples")),
    )
    op.create_index("ix_samples_task", "samples", ["task_id", "model_id"], unique=False)
    op.create_table(
        "task_stats",
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("model_id", sa.String(66), nullable=False),
        sa.Column("task_source", sa.String(256), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("checked", sa.BigInteger(), nullable=False),
        sa.Column("correct", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "model_id", name=op.f("pk_task_stats")),
    )
    op.create_index("ux_journal_sample", "journal", ["job_id"], unique=True, sqlite_where=_SAMPLE,
                    postgresql_where=_SAMPLE)
    op.create_index("ix_journal_samples", "journal", ["seq"], unique=False, sqlite_where=_SAMPLE,
                    postgresql_where=_SAMPLE)


def downgrade() -> None:
    op.drop_index("ix_journal_samples", table_name="journal")
    op.drop_index("ux_journal_sample", table_name="journal")
    op.drop_table("task_stats")
    op.drop_index("ix_samples_task", table_name="samples")
    op.drop_table("samples")
