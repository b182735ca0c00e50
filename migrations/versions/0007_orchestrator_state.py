"""orchestrator_workers, orchestrator_groups and orchestrator_lease: what an orchestrator resumes after a
restart, and which of the validator processes on one ledger orchestrates (issue 19).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orchestrator_workers",
        sa.Column("model_id", sa.String(66), primary_key=True),
        sa.Column("address", sa.String(42), primary_key=True),
        sa.Column("record", sa.JSON, nullable=False),
        sa.Column("signed_at", sa.Numeric(20, 6, asdecimal=False), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "orchestrator_groups",
        sa.Column("model_id", sa.String(66), primary_key=True),
        sa.Column("groups", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )

    op.create_table(
        "orchestrator_lease",
        sa.Column("model_id", sa.String(66), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("expires_at", sa.Numeric(20, 6, asdecimal=False), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("orchestrator_lease")
    op.drop_table("orchestrator_groups")
    op.drop_table("orchestrator_workers")
