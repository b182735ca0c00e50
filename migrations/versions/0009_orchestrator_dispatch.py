"""orchestrator_dispatch: how far an orchestrator's task dispatch got, so that the next orchestrator (a
takeover, a restart) goes on from there instead of running the task list again from its first task
(issue 19).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orchestrator_dispatch",
        sa.Column("model_id", sa.String(66), primary_key=True),
        sa.Column("tasks_digest", sa.String(64), nullable=False),
        sa.Column("finished", sa.JSON, nullable=False),
        sa.Column("seeds_reserved", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("orchestrator_dispatch")
