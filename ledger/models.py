"""The ledger's tables, as SQLAlchemy 2.0 declarative models.

Read top to bottom: who works (workers, with totals kept current by every journal append), what they
did (jobs with their bundle and the validation queue columns, stage receipts), what the validator
decided (verdicts), what it means in money (the journal, a hash chain), how that is summarised and
anchored (epochs and their per-worker cumulative rewards), and what still has to reach the chain
(chain_outbox, chain_cursor).

Amounts are wei and can exceed 2**63, so they use the `Wei` type: NUMERIC(78, 0) on PostgreSQL (holds any
uint256) and, on SQLite, whose NUMERIC would silently turn big values into floats, a zero-padded
78-digit string, which is exact and sorts like the number. Python always sees an `int`.

The uniqueness rules that keep money from being paid twice live here, in the database, not in code:
one reward per (job, stage), one slash per evidence hash, one soft invalidation per job, one anchor per
epoch, one journal entry per external reference (a chain event), one verdict per job, one outbox row
per (kind, key).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

UINT256_MAX = 2**256 - 1
WEI_DIGITS = 78  # len(str(2**256 - 1))

# Job validation status: the durable queue the validator works from.
JOB_PENDING = "pending"
JOB_VALIDATING = "validating"
JOB_DONE = "done"
JOB_STATUSES = (JOB_PENDING, JOB_VALIDATING, JOB_DONE)

# Verdict outcomes (PROTOCOL "Verdicts").
ACCEPTED = "accepted"
BLAMED = "blamed"
SOFT_INVALIDATED = "soft_invalidated"
OUTCOMES = (ACCEPTED, BLAMED, SOFT_INVALIDATED)

# Outbox status.
OUTBOX_PENDING = "pending"
OUTBOX_SENDING = "sending"
OUTBOX_SENT = "sent"
OUTBOX_FAILED = "failed"


class Wei(TypeDecorator[int]):
    """A non-negative integer up to 2**256 - 1, stored exactly on every database."""

    impl = Numeric(WEI_DIGITS, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(WEI_DIGITS))
        return dialect.type_descriptor(Numeric(WEI_DIGITS, 0))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
            raise TypeError(f"a wei amount must be an int, not {type(value).__name__}")
        value = int(value)
        if not 0 <= value <= UINT256_MAX:
            raise ValueError(f"a wei amount must be in [0, 2**256 - 1], got {value}")
        if dialect.name == "sqlite":
            return f"{value:0{WEI_DIGITS}d}"
        return Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Worker(Base):
    """A staked key, with the totals the leaderboard shows.

    `stake` is what the chain said last (set by chain sync); the other figures are maintained by the
    store in the same transaction as the journal entries that change them, so the leaderboard never
    aggregates the journal.
    """

    __tablename__ = "workers"

    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    stake: Mapped[int] = mapped_column(Wei, default=0)
    stake_block: Mapped[int | None] = mapped_column(BigInteger)
    rewards: Mapped[int] = mapped_column(Wei, default=0)
    accepted_jobs: Mapped[int] = mapped_column(BigInteger, default=0)
    work_units: Mapped[int] = mapped_column(BigInteger, default=0)
    slashes: Mapped[int] = mapped_column(BigInteger, default=0)
    slashed_amount: Mapped[int] = mapped_column(Wei, default=0)
    last_seq: Mapped[int | None] = mapped_column(BigInteger)
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    # Leaderboard order: ORDER BY rewards DESC, address DESC walks this index backwards.
    __table_args__ = (Index("ix_workers_rank", "rewards", "address"),)


class Job(Base):
    """A submitted bundle, stored as its canonical JSON, and its place in the validation queue."""

    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    group_id: Mapped[str | None] = mapped_column(String(66))
    model_id: Mapped[str | None] = mapped_column(String(66))
    stage_count: Mapped[int] = mapped_column(Integer)
    bundle: Mapped[str] = mapped_column(Text)
    submitted_by: Mapped[str | None] = mapped_column(String(42))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default=JOB_PENDING)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_jobs_queue", "status", "received_at"),)


# Bundles are mostly hex that pglz barely shrinks: stored uncompressed they insert ~5x faster (migration 0004).
event.listen(
    Job.__table__, "after_create",
    DDL("ALTER TABLE jobs ALTER COLUMN bundle SET STORAGE EXTERNAL").execute_if(dialect="postgresql"),
)


class StageReceipt(Base):
    """One stage's signed receipt for one job."""

    __tablename__ = "stage_receipts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker: Mapped[str] = mapped_column(String(42))
    layer_start: Mapped[int] = mapped_column(Integer)
    layer_end: Mapped[int] = mapped_column(Integer)
    token_count: Mapped[int] = mapped_column(BigInteger)
    work_units: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[str] = mapped_column(String(132))

    __table_args__ = (Index("ix_stage_receipts_worker", "worker", "job_id"),)


class Verdict(Base):
    """The validator's decision on one job (PROTOCOL I4, I5): at most one per job."""

    __tablename__ = "verdicts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(24))
    blamed_stage: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    figures: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    validator: Mapped[str | None] = mapped_column(String(42))
    decided_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_verdicts_outcome", "outcome", "decided_at"),)


class JournalEntry(Base):
    """One append-only journal entry; `entry_hash` = keccak256(prev_hash || canonical fields).

    `seq` is the entry's position in the chain (1, 2, ...), assigned under the journal head's lock.
    """

    __tablename__ = "journal"

    # INTEGER on SQLite makes seq the table's rowid (64-bit there anyway): one B-tree fewer per append.
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(24))
    worker: Mapped[str | None] = mapped_column(String(42))
    amount: Mapped[int] = mapped_column(Wei)
    job_id: Mapped[str | None] = mapped_column(String(66))
    stage: Mapped[int | None] = mapped_column(Integer)
    work_units: Mapped[int | None] = mapped_column(BigInteger)
    evidence_hash: Mapped[str | None] = mapped_column(String(66))
    epoch: Mapped[int | None] = mapped_column(BigInteger)
    ref: Mapped[str | None] = mapped_column(String(140))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    prev_hash: Mapped[str] = mapped_column(String(66))
    entry_hash: Mapped[str] = mapped_column(String(66))

    __table_args__ = (
        Index("ix_journal_worker_seq", "worker", "seq"),
        # Partial indexes hold only the rows they are about, so the common entry (a reward) pays for
        # three B-trees (table, worker, reward identity) instead of six.
        Index(
            "ix_journal_slashes",
            "seq",
            sqlite_where=text("kind = 'slash'"),
            postgresql_where=text("kind = 'slash'"),
        ),
        # One worker's slashing history: exact, however many slashes the whole journal holds.
        Index(
            "ix_journal_worker_slashes",
            "worker",
            "seq",
            sqlite_where=text("kind = 'slash'"),
            postgresql_where=text("kind = 'slash'"),
        ),
        Index(
            "ux_journal_ref",
            "ref",
            unique=True,
            sqlite_where=text("ref IS NOT NULL"),
            postgresql_where=text("ref IS NOT NULL"),
        ),
        # I6: a reward for one (job, stage) exists at most once, whatever code writes it.
        Index(
            "ux_journal_reward",
            "job_id",
            "stage",
            unique=True,
            sqlite_where=text("kind = 'reward'"),
            postgresql_where=text("kind = 'reward'"),
        ),
        Index(
            "ux_journal_slash",
            "evidence_hash",
            unique=True,
            sqlite_where=text("kind = 'slash'"),
            postgresql_where=text("kind = 'slash'"),
        ),
        Index(
            "ux_journal_soft_invalidation",
            "job_id",
            unique=True,
            sqlite_where=text("kind = 'soft_invalidation'"),
            postgresql_where=text("kind = 'soft_invalidation'"),
        ),
        Index(
            "ux_journal_anchor",
            "epoch",
            unique=True,
            sqlite_where=text("kind = 'anchor'"),
            postgresql_where=text("kind = 'anchor'"),
        ),
        # One dataset row per job; the export walks sample entries in journal order (migration 0006).
        Index(
            "ux_journal_sample",
            "job_id",
            unique=True,
            sqlite_where=text("kind = 'sample'"),
            postgresql_where=text("kind = 'sample'"),
        ),
        Index(
            "ix_journal_samples",
            "seq",
            sqlite_where=text("kind = 'sample'"),
            postgresql_where=text("kind = 'sample'"),
        ),
    )


class JournalHead(Base):
    """The last entry of the journal, one row (id 1). Appenders lock it (SELECT ... FOR UPDATE on
    PostgreSQL), which serialises appends across connections and keeps the hash chain linear.

    It also counts the rows of `workers`, under the same lock: the leaderboard's total would otherwise be
    a count(*) over a table that every append rewrites, which PostgreSQL pays for in dead tuples until
    autovacuum passes."""

    __tablename__ = "journal_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[str] = mapped_column(String(66))
    worker_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Epoch(Base):
    """A closed range of journal entries [first_seq, last_seq] with its two Merkle roots. Its number is the
    chain epoch it is anchored as; the numbers other validators anchored in between are followed_epochs."""

    __tablename__ = "epochs"

    number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    entry_count: Mapped[int] = mapped_column(BigInteger)
    entries_root: Mapped[str] = mapped_column(String(66))
    rewards_root: Mapped[str] = mapped_column(String(66))
    total_rewards: Mapped[int] = mapped_column(Wei)
    closed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    anchor_tx: Mapped[str | None] = mapped_column(String(66))
    anchored_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class EpochReward(Base):
    """A worker's cumulative reward as of an epoch: the leaves of that epoch's rewards root, kept so
    that a claim proof is served without re-reading the journal."""

    __tablename__ = "epoch_rewards"

    epoch: Mapped[int] = mapped_column(ForeignKey("epochs.number", ondelete="CASCADE"), primary_key=True)
    worker: Mapped[str] = mapped_column(String(42), primary_key=True)
    cumulative: Mapped[int] = mapped_column(Wei)


class FollowedEpoch(Base):
    """A chain epoch another validator anchored, as this ledger followed it: its roots (checked against the
    chain's Anchored event) and where its entries came from. Its entries live in the proposer's ledger."""

    __tablename__ = "followed_epochs"

    number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    proposer: Mapped[str] = mapped_column(String(42))
    entry_count: Mapped[int] = mapped_column(BigInteger)
    entries_root: Mapped[str] = mapped_column(String(66))
    rewards_root: Mapped[str] = mapped_column(String(66))
    total_rewards: Mapped[int] = mapped_column(Wei)
    anchor_tx: Mapped[str] = mapped_column(String(66))
    source: Mapped[str] = mapped_column(String(500))
    followed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class FollowedReward(Base):
    """A worker's cumulative reward as of a followed epoch: the leaves of its rewards root, which the next
    epoch this ledger proposes adds its own rewards to, and which claim proofs are served from."""

    __tablename__ = "followed_rewards"

    epoch: Mapped[int] = mapped_column(ForeignKey("followed_epochs.number", ondelete="CASCADE"), primary_key=True)
    worker: Mapped[str] = mapped_column(String(42), primary_key=True)
    cumulative: Mapped[int] = mapped_column(Wei)


class ChainOutbox(Base):
    """A chain transaction the node owes (a slash, an anchor): written in the same database transaction
    as the decision that causes it, sent later, at most once per (kind, key)."""

    __tablename__ = "chain_outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(140))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=OUTBOX_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    tx_hash: Mapped[str | None] = mapped_column(String(66))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("kind", "key"),
        Index("ix_chain_outbox_status", "status", "id"),
    )


class ChainCursor(Base):
    """The last block whose events have been applied, per followed contract (or any other name)."""

    __tablename__ = "chain_cursor"

    name: Mapped[str] = mapped_column(String(140), primary_key=True)
    block: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Sample(Base):
    """What an accepted job produced, as a dataset row: the task, the texts and tokens, the checker's result
    and the verdict (copied when recorded). Its `digest` (ledger.samples) is what the job's `sample` journal
    entry commits to, so every row can be proved against an anchored entries root (migration 0006)."""

    __tablename__ = "samples"

    job_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(128))
    task_source: Mapped[str] = mapped_column(String(256))
    model_id: Mapped[str] = mapped_column(String(66))
    prompt_text: Mapped[str | None] = mapped_column(Text)
    prompt_token_ids: Mapped[str] = mapped_column(Text)  # a JSON array
    completion_text: Mapped[str] = mapped_column(Text)
    completion_token_ids: Mapped[str] = mapped_column(Text)  # a JSON array
    sampling: Mapped[str] = mapped_column(Text)  # a JSON object
    seed: Mapped[str] = mapped_column(String(20))  # a uint64 in decimal: above BIGINT's range
    answer: Mapped[str | None] = mapped_column(Text)
    checker: Mapped[str | None] = mapped_column(String(32))
    correct: Mapped[bool | None] = mapped_column(Boolean)
    verdict: Mapped[str] = mapped_column(String(24))
    verdict_figures: Mapped[str | None] = mapped_column(Text)  # a JSON value
    digest: Mapped[str] = mapped_column(String(66))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_samples_task", "task_id", "model_id"),)


class TaskStats(Base):
    """Samples of one task on one model and how many the checker passed, kept by `record_sample` in the same
    transaction (GET /v1/tasks reads these rows instead of aggregating `samples`)."""

    __tablename__ = "task_stats"

    task_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    task_source: Mapped[str] = mapped_column(String(256))
    samples: Mapped[int] = mapped_column(BigInteger, default=0)
    checked: Mapped[int] = mapped_column(BigInteger, default=0)
    correct: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class NodeSecret(Base):
    """A secret the validators sharing this ledger must agree on and workers must not know (the spot-check
    secret), made once by whichever validator needs it first."""

    __tablename__ = "node_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(130))  # 0x-hex
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))



class DriftTest(Base):
    """A worker's running sequential test over its accepted jobs in one model and precision (the validator's
    cross-job check, node/toploc/job_statistics.py): the log-likelihood ratio since the test last restarted and
    how many jobs it holds. Not a journal fact: it moves no money."""

    __tablename__ = "drift_tests"

    worker: Mapped[str] = mapped_column(String(42), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    precision: Mapped[str] = mapped_column(String(8), primary_key=True)
    log_ratio: Mapped[float] = mapped_column(Numeric(20, 6, asdecimal=False))
    jobs: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class DriftFlag(Base):
    """A worker whose running figures drifted: the job whose figures decided it, the stage it served there, and
    the test's state at the decision. The worker is kept out of this ledger's groups for a while
    (node/orchestration/bans.py); one flag per job."""

    __tablename__ = "drift_flags"
    __table_args__ = (Index("ix_drift_flags_worker_at_ms", "worker", "at_ms"),)

    job_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    worker: Mapped[str] = mapped_column(String(42))
    model_id: Mapped[str] = mapped_column(String(66))
    precision: Mapped[str] = mapped_column(String(8))
    stage: Mapped[int] = mapped_column(Integer)
    log_ratio: Mapped[float] = mapped_column(Numeric(20, 6, asdecimal=False))
    jobs: Mapped[int] = mapped_column(Integer)
    at_ms: Mapped[int] = mapped_column(BigInteger)


class OrchestratorWorker(Base):
    """A worker registered with an orchestrator, kept so that a restarted validator resumes it (not a
    journal fact: it moves no money). `record` is the registry's JSON of it; `signed_at` the timestamp of
    the registration it last accepted, so a replayed older one is refused after a restart too."""

    __tablename__ = "orchestrator_workers"

    model_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    signed_at: Mapped[float] = mapped_column(Numeric(20, 6, asdecimal=False))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class OrchestratorGroups(Base):
    """The groups an orchestrator last formed for a model (their stages and layer ranges), as JSON."""

    __tablename__ = "orchestrator_groups"

    model_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    groups: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

class OrchestratorDispatch(Base):
    """How far a model's task dispatch got: the positions in the task list (`tasks_digest` names the list)
    that finished, with their figures, and the seed counter reserved so far. A later orchestrator goes on
    from there; seeds are never issued twice from one secret, whatever the task list."""

    __tablename__ = "orchestrator_dispatch"

    model_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    tasks_digest: Mapped[str] = mapped_column(String(64))
    finished: Mapped[dict[str, Any]] = mapped_column(JSON)
    seeds_reserved: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class OrchestratorLease(Base):
    """Which validator process orchestrates a model on this ledger, until when (unix seconds): the others
    validate and stand by, and one of them takes over once the lease runs out unrenewed."""

    __tablename__ = "orchestrator_lease"

    model_id: Mapped[str] = mapped_column(String(66), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[float] = mapped_column(Numeric(20, 6, asdecimal=False))


metadata = Base.metadata
