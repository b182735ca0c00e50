"""The ledger schema: workers, jobs and receipts, verdicts, the journal and its head, epochs, chain outbox and cursor.

Wei amounts are NUMERIC(78, 0) on PostgreSQL and zero-padded 78-digit strings on SQLite (see ledger.models.Wei).

Revision ID: 0001
Revises: 
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

WEI = sa.Numeric(78, 0).with_variant(sa.String(78), "sqlite")

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('chain_cursor',
    sa.Column('name', sa.String(length=140), nullable=False),
    sa.Column('block', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_chain_cursor'))
    )
    op.create_table('chain_outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=140), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('tx_hash', sa.String(length=66), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chain_outbox')),
    sa.UniqueConstraint('kind', 'key', name=op.f('uq_chain_outbox_kind_key'))
    )
    op.create_index('ix_chain_outbox_status', 'chain_outbox', ['status', 'id'], unique=False)

    op.create_table('epochs',
    sa.Column('number', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('first_seq', sa.BigInteger(), nullable=False),
    sa.Column('last_seq', sa.BigInteger(), nullable=False),
    sa.Column('entry_count', sa.BigInteger(), nullable=False),
    sa.Column('entries_root', sa.String(length=66), nullable=False),
    sa.Column('rewards_root', sa.String(length=66), nullable=False),
    sa.Column('total_rewards', WEI, nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('anchor_tx', sa.String(length=66), nullable=True),
    sa.Column('anchored_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('number', name=op.f('pk_epochs'))
    )
    op.create_table('jobs',
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('group_id', sa.String(length=66), nullable=True),
    sa.Column('model_id', sa.String(length=66), nullable=True),
    sa.Column('stage_count', sa.Integer(), nullable=False),
    sa.Column('bundle', sa.Text(), nullable=False),
    sa.Column('submitted_by', sa.String(length=42), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('claimed_by', sa.String(length=128), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_jobs'))
    )
    op.create_index('ix_jobs_queue', 'jobs', ['status', 'received_at'], unique=False)

    op.create_table('journal',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('worker', sa.String(length=42), nullable=True),
    sa.Column('amount', WEI, nullable=False),
    sa.Column('job_id', sa.String(length=66), nullable=True),
    sa.Column('stage', sa.Integer(), nullable=True),
    sa.Column('work_units', sa.BigInteger(), nullable=True),
    sa.Column('evidence_hash', sa.String(length=66), nullable=True),
    sa.Column('epoch', sa.BigInteger(), nullable=True),
    sa.Column('ref', sa.String(length=140), nullable=True),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.Column('at_ms', sa.BigInteger(), nullable=False),
    sa.Column('prev_hash', sa.String(length=66), nullable=False),
    sa.Column('entry_hash', sa.String(length=66), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_journal'))
    )
    op.create_index('ix_journal_slashes', 'journal', ['seq'], unique=False, sqlite_where=sa.text("kind = 'slash'"), postgresql_where=sa.text("kind = 'slash'"))
    op.create_index('ux_journal_ref', 'journal', ['ref'], unique=True, sqlite_where=sa.text("ref IS NOT NULL"), postgresql_where=sa.text("ref IS NOT NULL"))
    op.create_index('ix_journal_worker_seq', 'journal', ['worker', 'seq'], unique=False)
    op.create_index('ux_journal_anchor', 'journal', ['epoch'], unique=True, sqlite_where=sa.text("kind = 'anchor'"), postgresql_where=sa.text("kind = 'anchor'"))
    op.create_index('ux_journal_reward', 'journal', ['job_id', 'stage'], unique=True, sqlite_where=sa.text("kind = 'reward'"), postgresql_where=sa.text("kind = 'reward'"))
    op.create_index('ux_journal_slash', 'journal', ['evidence_hash'], unique=True, sqlite_where=sa.text("kind = 'slash'"), postgresql_where=sa.text("kind = 'slash'"))
    op.create_index('ux_journal_soft_invalidation', 'journal', ['job_id'], unique=True, sqlite_where=sa.text("kind = 'soft_invalidation'"), postgresql_where=sa.text("kind = 'soft_invalidation'"))

    op.create_table('journal_head',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('entry_hash', sa.String(length=66), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journal_head'))
    )
    op.create_table('workers',
    sa.Column('address', sa.String(length=42), nullable=False),
    sa.Column('stake', WEI, nullable=False),
    sa.Column('stake_block', sa.BigInteger(), nullable=True),
    sa.Column('rewards', WEI, nullable=False),
    sa.Column('accepted_jobs', sa.BigInteger(), nullable=False),
    sa.Column('work_units', sa.BigInteger(), nullable=False),
    sa.Column('slashes', sa.BigInteger(), nullable=False),
    sa.Column('slashed_amount', WEI, nullable=False),
    sa.Column('last_seq', sa.BigInteger(), nullable=True),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('address', name=op.f('pk_workers'))
    )
    op.create_index('ix_workers_rank', 'workers', ['rewards', 'address'], unique=False)

    op.create_table('epoch_rewards',
    sa.Column('epoch', sa.BigInteger(), nullable=False),
    sa.Column('worker', sa.String(length=42), nullable=False),
    sa.Column('cumulative', WEI, nullable=False),
    sa.ForeignKeyConstraint(['epoch'], ['epochs.number'], name=op.f('fk_epoch_rewards_epoch_epochs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('epoch', 'worker', name=op.f('pk_epoch_rewards'))
    )
    op.create_table('stage_receipts',
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=42), nullable=False),
    sa.Column('layer_start', sa.Integer(), nullable=False),
    sa.Column('layer_end', sa.Integer(), nullable=False),
    sa.Column('token_count', sa.BigInteger(), nullable=False),
    sa.Column('work_units', sa.BigInteger(), nullable=False),
    sa.Column('signature', sa.String(length=132), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_stage_receipts_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'stage', name=op.f('pk_stage_receipts'))
    )
    op.create_index('ix_stage_receipts_worker', 'stage_receipts', ['worker', 'job_id'], unique=False)

    op.create_table('verdicts',
    sa.Column('job_id', sa.String(length=66), nullable=False),
    sa.Column('outcome', sa.String(length=24), nullable=False),
    sa.Column('blamed_stage', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('figures', sa.JSON(), nullable=True),
    sa.Column('validator', sa.String(length=42), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.job_id'], name=op.f('fk_verdicts_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_verdicts'))
    )
    op.create_index('ix_verdicts_outcome', 'verdicts', ['outcome', 'decided_at'], unique=False)



def downgrade() -> None:
    op.drop_index('ix_verdicts_outcome', table_name='verdicts')

    op.drop_table('verdicts')
    op.drop_index('ix_stage_receipts_worker', table_name='stage_receipts')

    op.drop_table('stage_receipts')
    op.drop_table('epoch_rewards')
    op.drop_index('ix_workers_rank', table_name='workers')

    op.drop_table('workers')
    op.drop_table('journal_head')
    op.drop_index('ux_journal_soft_invalidation', table_name='journal')
    op.drop_index('ux_journal_slash', table_name='journal')
    op.drop_index('ux_journal_reward', table_name='journal')
    op.drop_index('ux_journal_anchor', table_name='journal')
    op.drop_index('ix_journal_worker_seq', table_name='journal')
    op.drop_index('ux_journal_ref', table_name='journal')
    op.drop_index('ix_journal_slashes', table_name='journal')

    op.drop_table('journal')
    op.drop_index('ix_jobs_queue', table_name='jobs')

    op.drop_table('jobs')
    op.drop_table('epochs')
    op.drop_index('ix_chain_outbox_status', table_name='chain_outbox')

    op.drop_table('chain_outbox')
    op.drop_table('chain_cursor')
