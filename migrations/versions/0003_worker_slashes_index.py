"""ix_journal_worker_slashes: one worker's slashing history reads only that worker's slashes.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_journal_worker_slashes",
        "journal",
        ["worker", "seq"],
        unique=False,
        sqlite_where=sa.text("kind = 'slash'"),
        postgresql_where=sa.text("kind = 'slash'"),
    )


def downgrade() -> None:
    op.drop_index("ix_journal_worker_slashes", table_name="journal")
