"""jobs.bundle stored out of line without compression on PostgreSQL (STORAGE EXTERNAL).

A bundle is ~18 KB of JSON, mostly hex proofs that pglz barely shrinks: compressing every one on insert
cost 0.8-1.0 ms per row and capped intake near 300 bundles/s; EXTERNAL writes it in 0.16 ms (measured on
PostgreSQL 15, 25 rows per transaction). SQLite has no such setting: nothing to do there.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobs ALTER COLUMN bundle SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobs ALTER COLUMN bundle SET STORAGE EXTENDED")
