"""journal_head.worker_count: the number of workers, kept under the head lock for the leaderboard's total.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("journal_head", sa.Column("worker_count", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute("UPDATE journal_head SET worker_count = (SELECT count(*) FROM workers)")


def downgrade() -> None:
    with op.batch_alter_table("journal_head") as batch:
        batch.drop_column("worker_count")
