"""followed_epochs and followed_rewards: the chain epochs other validators anchored, as this ledger followed
them (issue 16: validators with their own ledgers share one contract, one proposer per epoch).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

WEI = sa.Numeric(78, 0).with_variant(sa.String(78), "sqlite")


def upgrade() -> None:
    op.create_table(
        "followed_epochs",
        sa.Column("number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("proposer", sa.String(42), nullable=False),
        sa.Column("entry_count", sa.BigInteger(), nullable=False),
        sa.Column("entries_root", sa.String(66), nullable=False),
        sa.Column("rewards_root", sa.String(66), nullable=False),
        sa.Column("total_rewards", WEI, nullable=False),
        sa.Column("anchor_tx", sa.String(66), nullable=False),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("followed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_followed_epochs")),
    )
    op.create_table(
        "followed_rewards",
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("worker", sa.String(42), nullable=False),
        sa.Column("cumulative", WEI, nullable=False),
        sa.ForeignKeyConstraint(["epoch"], ["followed_epochs.number"], name=op.f("fk_followed_rewards_epoch_followed_epochs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("epoch", "worker", name=op.f("pk_followed_rewards")),
    )


def downgrade() -> None:
    op.drop_table("followed_rewards")
    op.drop_table("followed_epochs")
