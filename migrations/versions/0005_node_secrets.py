"""node_secrets: secrets the validators on one ledger share and workers must not know (the spot-check secret).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(130), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("node_secrets")
