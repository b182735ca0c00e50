"""The ledger's read side: jobs, receipts, verdicts, the journal, the leaderboard, histories, epochs.

Each query takes a connection; `Ledger` offers each as a call of its own on a reading connection:
- `job(job_id) -> JobRecord | None`, `receipts(job_id) -> [StageRecord]`, `verdict(job_id) -> VerdictRecord
  | None`, `head() -> (seq, hash)`, `entries(after_seq, limit) -> [Entry]`.
- `tasks(offset, limit)`: per task and model, accepted samples and the checker's passes.
- `leaderboard(offset, limit)`, `worker(address)`, `worker_history(address, offset, limit, kinds=None)`,
  `slashes(offset, limit, worker=None)`, `epochs(offset, limit)`, `epoch(number=None)`: paginated (`Page`).

Every query reads indexed rows only, never aggregates the journal: the leaderboard walks the
`ix_workers_rank` index of the per-worker totals that each append keeps current; histories walk
`ix_journal_worker_seq` / `ix_journal_slashes` backwards (newest first).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import journal
from ledger.journal import Entry, checksum, hash32
from ledger.models import (
    Epoch,
    EpochReward,
    FollowedEpoch,
    FollowedReward,
    Job,
    JournalEntry,
    JournalHead,
    StageReceipt,
    TaskStats,
    Verdict,
    Worker,
)

T = TypeVar("T")
MAX_PAGE = 500
_J = JournalEntry.__table__
_W = Worker.__table__


@dataclass(frozen=True)
class StageRecord:
    """One stage's receipt as the ledger keeps it (the full receipt stays inside the bundle JSON)."""

    stage: int
    worker: str
    layer_start: int
    layer_end: int
    token_count: int
    work_units: int
    signature: str


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    group_id: str | None
    model_id: str | None
    stage_count: int
    bundle: str
    submitted_by: str | None
    received_at: dt.datetime
    status: str
    claimed_by: str | None
    claimed_at: dt.datetime | None
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class VerdictRecord:
    job_id: str
    outcome: str
    blamed_stage: int | None
    reason: str | None
    figures: dict[str, Any] | None
    validator: str | None
    decided_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "outcome": self.outcome,
            "blamed_stage": self.blamed_stage,
            "reason": self.reason,
            "figures": self.figures,
            "validator": self.validator,
            "decided_at": self.decided_at.isoformat(),
        }


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int

    def to_json(self) -> dict[str, Any]:
        return {
            "items": [item.to_json() for item in self.items],  # type: ignore[attr-defined]
            "total": self.total,
            "offset": self.offset,
            "limit": self.limit,
        }


@dataclass(frozen=True)
class WorkerStanding:
    """A worker's line on the leaderboard."""

    rank: int
    address: str
    rewards: int
    accepted_jobs: int
    work_units: int
    slashes: int
    slashed_amount: int
    stake: int
    stake_block: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "address": self.address,
            "rewards": str(self.rewards),
            "accepted_jobs": self.accepted_jobs,
            "work_units": self.work_units,
            "slashes": self.slashes,
            "slashed_amount": str(self.slashed_amount),
            "stake": str(self.stake),
            "stake_block": self.stake_block,
        }


@dataclass(frozen=True)
class SlashRecord:
    """One slash: who, how much, for which job and stage, and the evidence that convicted them."""

    seq: int
    worker: str
    amount: int
    job_id: str | None
    stage: int | None
    evidence_hash: str
    evidence: dict[str, Any] | None
    reason: str | None
    at_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "worker": self.worker,
            "amount": str(self.amount),
            "job_id": self.job_id,
            "stage": self.stage,
            "evidence_hash": self.evidence_hash,
            "evidence": self.evidence,
            "reason": self.reason,
            "at_ms": self.at_ms,
        }


@dataclass(frozen=True)
class EpochRecord:
    number: int
    first_seq: int
    last_seq: int
    entry_count: int
    entries_root: str
    rewards_root: str
    total_rewards: int
    closed_at: dt.datetime
    anchor_tx: str | None
    anchored_at: dt.datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "entry_count": self.entry_count,
            "entries_root": self.entries_root,
            "rewards_root": self.rewards_root,
            "total_rewards": str(self.total_rewards),
            "closed_at": self.closed_at.isoformat(),
            "anchor_tx": self.anchor_tx,
            "anchored_at": self.anchored_at.isoformat() if self.anchored_at else None,
        }


@dataclass(frozen=True)
class FollowedEpochRecord:
    """A chain epoch another validator anchored, as this ledger follows it (its entries are in that ledger)."""

    number: int
    proposer: str
    entry_count: int
    entries_root: str
    rewards_root: str
    total_rewards: int
    anchor_tx: str
    source: str

    def to_row(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def job(conn: AsyncConnection, job_id: str) -> JobRecord | None:
    row = (await conn.execute(select(Job.__table__).where(Job.job_id == hash32(job_id, "job_id")))).one_or_none()
    return None if row is None else JobRecord(**row._mapping)


async def receipts(conn: AsyncConnection, job_id: str) -> list[StageRecord]:
    t = StageReceipt.__table__
    rows = (await conn.execute(select(t).where(t.c.job_id == hash32(job_id, "job_id")).order_by(t.c.stage))).all()
    return [
        StageRecord(r.stage, r.worker, r.layer_start, r.layer_end, r.token_count, r.work_units, r.signature)
        for r in rows
    ]


async def verdict(conn: AsyncConnection, job_id: str) -> VerdictRecord | None:
    row = (
        await conn.execute(select(Verdict.__table__).where(Verdict.job_id == hash32(job_id, "job_id")))
    ).one_or_none()
    return None if row is None else VerdictRecord(**row._mapping)


async def head(conn: AsyncConnection) -> tuple[int, str]:
    """(seq, hash) of the last journal entry; (0, 32 zero bytes) for an empty journal."""
    row = (await conn.execute(select(JournalHead.seq, JournalHead.entry_hash).where(JournalHead.id == 1))).one()
    return row.seq, row.entry_hash


async def entries(conn: AsyncConnection, after_seq: int = 0, limit: int = 1000) -> list[Entry]:
    """Journal entries in order, starting after `after_seq`."""
    rows = (await conn.execute(select(_J).where(_J.c.seq > after_seq).order_by(_J.c.seq).limit(limit))).all()
    return [journal.entry_from_row(r) for r in rows]


def _page_args(offset: int, limit: int) -> tuple[int, int]:
    if offset < 0 or limit < 1:
        raise ValueError("offset must be >= 0 and limit >= 1")
    return offset, min(limit, MAX_PAGE)


def _standing(rank: int, row: Any) -> WorkerStanding:
    return WorkerStanding(
        rank=rank,
        address=row.address,
        rewards=row.rewards,
        accepted_jobs=row.accepted_jobs,
        work_units=row.work_units,
        slashes=row.slashes,
        slashed_amount=row.slashed_amount,
        stake=row.stake,
        stake_block=row.stake_block,
    )


async def leaderboard(conn: AsyncConnection, offset: int = 0, limit: int = 50) -> Page[WorkerStanding]:
    """Workers by total reward, highest first (ties: by address, descending); rank 1 is the top."""
    offset, limit = _page_args(offset, limit)
    rows = (
        await conn.execute(
            select(_W).order_by(_W.c.rewards.desc(), _W.c.address.desc()).offset(offset).limit(limit)
        )
    ).all()
    # The head row counts workers (see JournalHead): no count(*) over a table every append rewrites.
    total = (await conn.execute(select(JournalHead.worker_count).where(JournalHead.id == 1))).scalar_one()
    return Page([_standing(offset + i + 1, r) for i, r in enumerate(rows)], total, offset, limit)


async def worker(conn: AsyncConnection, address: str) -> WorkerStanding | None:
    """One worker's leaderboard line, with its rank."""
    row = (await conn.execute(select(_W).where(_W.c.address == checksum(address)))).one_or_none()
    if row is None:
        return None
    ahead = (
        await conn.execute(
            select(func.count())
            .select_from(_W)
            .where(or_(_W.c.rewards > row.rewards, and_(_W.c.rewards == row.rewards, _W.c.address > row.address)))
        )
    ).scalar_one()
    return _standing(ahead + 1, row)


async def worker_history(
    conn: AsyncConnection, address: str, offset: int = 0, limit: int = 50, kinds: Sequence[str] | None = None
) -> Page[Entry]:
    """A worker's journal entries, newest first, optionally only some kinds."""
    address = checksum(address)
    offset, limit = _page_args(offset, limit)
    where = [_J.c.worker == address]
    if kinds:
        where.append(_J.c.kind.in_(list(kinds)))
    rows = (
        await conn.execute(select(_J).where(*where).order_by(_J.c.seq.desc()).offset(offset).limit(limit))
    ).all()
    total = (await conn.execute(select(func.count()).select_from(_J).where(*where))).scalar_one()
    return Page([journal.entry_from_row(r) for r in rows], total, offset, limit)


async def slashes(
    conn: AsyncConnection, offset: int = 0, limit: int = 50, worker: str | None = None
) -> Page[SlashRecord]:
    """Slashes, newest first (all workers, or one), with the evidence figures and the verdict's reason."""
    worker = checksum(worker) if worker else None
    offset, limit = _page_args(offset, limit)
    where = [_J.c.kind == journal.SLASH]
    if worker is not None:
        where.append(_J.c.worker == worker)
    v = Verdict.__table__
    rows = (
        await conn.execute(
            select(_J, v.c.reason)
            .select_from(_J.outerjoin(v, v.c.job_id == _J.c.job_id))
            .where(*where)
            .order_by(_J.c.seq.desc())
            .offset(offset)
            .limit(limit)
        )
    ).all()
    total = (await conn.execute(select(func.count()).select_from(_J).where(*where))).scalar_one()
    items = [
        SlashRecord(r.seq, r.worker, r.amount, r.job_id, r.stage, r.evidence_hash, r.data, r.reason, r.at_ms)
        for r in rows
    ]
    return Page(items, total, offset, limit)


async def verdict_outcomes(conn: AsyncConnection, job_ids: Sequence[str]) -> dict[str, str]:
    """job id -> its verdict's outcome, for those of `job_ids` that have one, in one statement (the
    orchestrator waits on the verdicts of every job it finished: node/orchestration/setup.py)."""
    wanted = sorted({hash32(j, "job_id") for j in job_ids})
    if not wanted:
        return {}
    rows = (await conn.execute(select(Verdict.job_id, Verdict.outcome).where(Verdict.job_id.in_(wanted)))).all()
    return {job_id: outcome for job_id, outcome in rows}


async def slash_times_ms(conn: AsyncConnection, workers: Sequence[str], per_worker: int) -> dict[str, list[int]]:
    """The times (ms) of each of `workers`' latest `per_worker` slashes, newest first, in one statement:
    what a ban is decided from (node/orchestration/bans.py). Workers never slashed are left out."""
    addresses = sorted({checksum(w) for w in workers})
    if not addresses:
        return {}
    rows = (await conn.execute(
        select(_J.c.worker, _J.c.at_ms).where(_J.c.kind == journal.SLASH, _J.c.worker.in_(addresses))
        .order_by(_J.c.seq.desc())
    )).all()
    times: dict[str, list[int]] = {}
    for worker, at_ms in rows:
        kept = times.setdefault(worker, [])
        if len(kept) < per_worker:
            kept.append(int(at_ms))
    return times


def _epoch(row: Any) -> EpochRecord:
    return EpochRecord(
        number=row.number,
        first_seq=row.first_seq,
        last_seq=row.last_seq,
        entry_count=row.entry_count,
        entries_root=row.entries_root,
        rewards_root=row.rewards_root,
        total_rewards=row.total_rewards,
        closed_at=row.closed_at,
        anchor_tx=row.anchor_tx,
        anchored_at=row.anchored_at,
    )


@dataclass(frozen=True)
class TaskLine:
    """One task on one model: accepted samples, how many had a checker, how many it passed."""

    task_id: str
    model_id: str
    task_source: str
    samples: int
    checked: int
    correct: int

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "model_id": self.model_id,
            "task_source": self.task_source,
            "samples": self.samples,
            "checked": self.checked,
            "correct": self.correct,
            "pass_rate": self.correct / self.checked if self.checked else None,
        }


async def tasks(conn: AsyncConnection, offset: int = 0, limit: int = 50) -> Page[TaskLine]:
    """Tasks by id, then model: the lines `record_sample` keeps (ledger.samples)."""
    offset, limit = _page_args(offset, limit)
    t = TaskStats.__table__
    rows = (await conn.execute(select(t).order_by(t.c.task_id, t.c.model_id).offset(offset).limit(limit))).all()
    total = (await conn.execute(select(func.count()).select_from(t))).scalar_one()
    return Page([TaskLine(r.task_id, r.model_id, r.task_source, r.samples, r.checked, r.correct) for r in rows],
                total, offset, limit)


async def epochs(conn: AsyncConnection, offset: int = 0, limit: int = 50) -> Page[EpochRecord]:
    """Closed epochs, newest first."""
    offset, limit = _page_args(offset, limit)
    t = Epoch.__table__
    rows = (await conn.execute(select(t).order_by(t.c.number.desc()).offset(offset).limit(limit))).all()
    total = (await conn.execute(select(func.count()).select_from(t))).scalar_one()
    return Page([_epoch(r) for r in rows], total, offset, limit)


async def epoch(conn: AsyncConnection, number: int | None = None) -> EpochRecord | None:
    """Epoch `number`, or the latest closed one."""
    t = Epoch.__table__
    query = select(t).order_by(t.c.number.desc()).limit(1) if number is None else select(t).where(t.c.number == number)
    row = (await conn.execute(query)).one_or_none()
    return None if row is None else _epoch(row)


async def epoch_cumulative(conn: AsyncConnection, number: int) -> dict[str, int] | None:
    """Every worker's cumulative reward as chain epoch `number` closed it (its rewards root's leaves), from an
    epoch this ledger closed or one it followed; {} for epoch 0, None when this ledger has neither."""
    if number == 0:
        return {}
    for table in (EpochReward.__table__, FollowedReward.__table__):
        rows = (await conn.execute(select(table.c.worker, table.c.cumulative).where(table.c.epoch == number))).all()
        if rows:
            return {r.worker: int(r.cumulative) for r in rows}
    return {} if await has_epoch(conn, number) else None


async def has_epoch(conn: AsyncConnection, number: int) -> bool:
    """Whether this ledger closed or followed chain epoch `number`."""
    for table in (Epoch.__table__, FollowedEpoch.__table__):
        if (await conn.execute(select(table.c.number).where(table.c.number == number))).first() is not None:
            return True
    return False


async def rewards_root_of(conn: AsyncConnection, number: int) -> str | None:
    """The rewards root of chain epoch `number` as this ledger closed or followed it; None when it has neither."""
    for table in (Epoch.__table__, FollowedEpoch.__table__):
        root = (await conn.execute(select(table.c.rewards_root).where(table.c.number == number))).scalar_one_or_none()
        if root is not None:
            return root
    return None


async def latest_known_epoch(conn: AsyncConnection) -> int:
    """The highest chain epoch this ledger closed or followed; 0 before any."""
    own = (await conn.execute(select(func.max(Epoch.number)))).scalar_one_or_none() or 0
    followed = (await conn.execute(select(func.max(FollowedEpoch.number)))).scalar_one_or_none() or 0
    return max(own, followed)


async def entries_waiting(conn: AsyncConnection) -> int:
    """Journal entries not yet in a closed epoch, not counting anchor entries: an epoch holding nothing but
    the previous epoch's anchor is not worth a transaction of its own (it rides with the next one)."""
    last = (await conn.execute(select(func.max(Epoch.last_seq)))).scalar_one_or_none() or 0
    query = select(func.count()).select_from(JournalEntry).where(JournalEntry.seq > last, JournalEntry.kind != "anchor")
    return int((await conn.execute(query)).scalar_one())


async def first_unsettled_epoch(conn: AsyncConnection) -> int:
    """The first chain epoch this ledger has still to settle with the chain: its earliest own epoch not yet
    marked anchored, or the one after the latest it closed or followed."""
    pending = (await conn.execute(select(func.min(Epoch.number)).where(Epoch.anchor_tx.is_(None)))).scalar_one_or_none()
    return pending if pending is not None else await latest_known_epoch(conn) + 1


async def followed_epoch(conn: AsyncConnection, number: int) -> FollowedEpochRecord | None:
    row = (await conn.execute(select(FollowedEpoch.__table__).where(FollowedEpoch.number == number))).one_or_none()
    return None if row is None else FollowedEpochRecord(
        row.number, row.proposer, row.entry_count, row.entries_root, row.rewards_root, int(row.total_rewards),
        row.anchor_tx, row.source)
