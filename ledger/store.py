"""The ledger store: one object over one SQL database (SQLite or PostgreSQL), async SQLAlchemy 2.0.

Open it from a URL (the node's settings choose the default); opening runs the Alembic migrations to head:

    ledger = await Ledger.open(url)              # or Ledger.open() for STAGEWISE_DB / the data dir
    ...
    await ledger.close()

Everything that must happen together happens in one transaction. A validator that has decided a job:

    async with ledger.transaction() as tx:
        if await tx.record_verdict(job_id, ACCEPTED, figures=figures, validator=me):   # False: already decided
            await tx.append([journal.reward(w, amount, job_id=job_id, stage=s, work_units=u) for ...])
            # or, when stage s is blamed:
            # await tx.append([journal.slash(w, amount, evidence_hash=h, job_id=job_id, stage=s, data=figures)])
            # await tx.enqueue("slash", h, {"worker": w, "amount": str(amount), "evidence_hash": h})
        await tx.set_job_status(job_id, "done")

Calls on a transaction (`LedgerTx`), all idempotent:
- `record_bundle(job_id, bundle_json, stages=[StageRecord...], ...) -> bool`: store a submitted bundle and its
  receipts, status "pending"; False (nothing written) when the job is already known (PROTOCOL I3).
- `record_verdict(job_id, outcome, blamed_stage=, reason=, figures=, validator=) -> bool`: one per job.
- `append([NewEntry...]) -> list[Entry]`: journal entries (build them with `ledger.journal.stake/unstake/
  reward/slash/soft_invalidation/anchor`); returns the entries written. An entry whose identity is already
  journaled (reward per job and stage, slash per evidence hash, soft invalidation per job, anchor per
  epoch, `ref` per chain event) is skipped, never an error; the database's UNIQUE indexes back this up.
  Worker totals (the leaderboard) are updated in the same transaction.
- `set_stake(address, stake, block=None)`: the stake the chain reports for a worker.
- `set_job_status(job_id, status, claimed_by=None, error=None)`: "pending" | "validating" | "done". The
  queue's claiming logic (SELECT ... FOR UPDATE SKIP LOCKED) is the validator's; the `jobs` columns
  status, claimed_by, claimed_at, attempts, last_error and the (status, received_at) index are for it.
- `enqueue(kind, key, payload) -> int | None`: a chain transaction owed (None: already queued).
- `close_epoch() -> EpochRecord | None`: close an epoch over the entries since the last one (None if none).
- `mark_anchored(number, tx_hash) -> Entry | None`: the epoch's roots are on chain; journals an anchor entry.
- `set_cursor(name, block)`.
The same calls exist on `Ledger` itself, each in its own transaction. Reading (`Ledger` only):
- `job(job_id)`, `receipts(job_id)`, `verdict(job_id)`, `head()`, `entries(after_seq, limit)`.
- `leaderboard(offset, limit)`, `worker(address)`, `worker_history(address, offset, limit, kinds=None)`,
  `slashes(offset, limit, worker=None)`, `epochs(offset, limit)`, `epoch(number)` (see ledger.queries).
- `reward_proof(worker, epoch=None) -> RewardProof | None`, `entry_proof(seq) -> EntryProof | None`;
  both carry `.verify()` (ledger.merkle.verify_* are the pure checks).
- outbox: `take_outbox(limit, kinds=None, stale_after_s=300)` (claims rows, SKIP LOCKED on PostgreSQL),
  `mark_sent(id, tx_hash)`, `mark_failed(id, error, retry=True)`, `outbox(status=None)`.
- `get_cursor(name) -> int | None`.
- `verify() -> VerifyReport`: recompute the hash chain, the totals and every epoch root.

Concurrency: every transaction that records a verdict, appends, enqueues, sets a stake or closes an epoch
first locks the journal head (SELECT ... FOR UPDATE on PostgreSQL; BEGIN IMMEDIATE on SQLite), so the
hash chain stays linear under any number of writers, and a duplicate is seen (and skipped) rather than
raced. Take row locks of your own (a job's queue row) before the first such call, never after, so that
every writer acquires locks in the same order.

Speed: appends are batched (one INSERT ... SELECT FROM unnest(...) per batch on PostgreSQL, a driver
executemany on SQLite) and per-worker totals are maintained in the same transaction, so the leaderboard
and histories read indexed rows only. bench/ledger.py measures it with a million entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Table, and_, event, or_, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ledger import epochs as epoch_math
from ledger import journal, queries
from ledger.database_url import async_url
from ledger.journal import Entry, NewEntry, checksum, hash32
from ledger.models import (
    ACCEPTED,
    BLAMED,
    JOB_PENDING,
    JOB_STATUSES,
    JOB_VALIDATING,
    OUTBOX_FAILED,
    OUTBOX_PENDING,
    OUTBOX_SENDING,
    OUTBOX_SENT,
    OUTCOMES,
    SOFT_INVALIDATED,
    WEI_DIGITS,
    ChainCursor,
    ChainOutbox,
    Epoch,
    EpochReward,
    Job,
    JournalEntry,
    JournalHead,
    StageReceipt,
    Verdict,
    Worker,
    metadata,
)
from ledger.queries import EpochRecord, Page, SlashRecord, WorkerStanding

log = logging.getLogger(__name__)

__all__ = [
    "ACCEPTED",
    "BLAMED",
    "SOFT_INVALIDATED",
    "Ledger",
    "LedgerTx",
    "LedgerError",
    "StageRecord",
    "JobRecord",
    "VerdictRecord",
    "OutboxRow",
    "VerifyReport",
    "Page",
    "WorkerStanding",
    "SlashRecord",
    "EpochRecord",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_J = JournalEntry.__table__
_W = Worker.__table__
_CHUNK = 500  # ids per IN (...) lookup
REWARD_TREES_KEPT = 8  # epochs whose rewards tree is kept for claim proofs (workers claim against the latest)
_MIGRATION_LOCK = 0x5354_4147_4557  # "STAGEW": the advisory lock key held while migrating


class LedgerError(Exception):
    """A request the ledger refuses (unknown job, bad status, ...); nothing was written."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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
class OutboxRow:
    id: int
    kind: str
    key: str
    payload: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None
    tx_hash: str | None


@dataclass(frozen=True)
class VerifyReport:
    """The result of `verify`: ok, how much was checked, and the first problem found (with its entry)."""

    ok: bool
    entries: int
    epochs: int
    first_bad_seq: int | None = None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "epochs": self.epochs,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
        }


def _entry_row(entry: Entry) -> dict[str, Any]:
    return {
        **journal.fields_of(entry),
        "seq": entry.seq,
        "at_ms": entry.at_ms,
        "prev_hash": entry.prev_hash,
        "entry_hash": entry.entry_hash,
    }


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class LedgerTx:
    """One database transaction on the ledger. Obtain it from `Ledger.transaction()`."""

    def __init__(self, ledger: Ledger, conn: AsyncConnection) -> None:
        self.ledger = ledger
        self.conn = conn
        self._head: tuple[int, str] | None = None

    def _insert(self, table: Table) -> Any:
        return self.ledger._insert(table)

    async def lock(self) -> tuple[int, str]:
        """Take the journal head's lock for the rest of this transaction; returns (seq, hash) of the head."""
        if self._head is None:
            query = select(JournalHead.seq, JournalHead.entry_hash).where(JournalHead.id == 1)
            if self.ledger.dialect == "postgresql":
                query = query.with_for_update()
            row = (await self.conn.execute(query)).one()
            self._head = (row.seq, row.entry_hash)
        return self._head

    # --- jobs and receipts ---------------------------------------------------------------------------

    async def record_bundle(
        self,
        job_id: str,
        bundle_json: str,
        stages: Sequence[StageRecord],
        *,
        group_id: str | None = None,
        model_id: str | None = None,
        submitted_by: str | None = None,
    ) -> bool:
        """Store a bundle and its receipts as a pending job. False, and nothing written, if already known."""
        job_id = hash32(job_id, "job_id")
        if not isinstance(bundle_json, str):
            raise LedgerError("bundle_json must be the bundle's JSON text")
        now = _now()
        stmt = (
            self._insert(Job.__table__)
            .values(
                job_id=job_id,
                group_id=group_id,
                model_id=model_id,
                stage_count=len(stages),
                bundle=bundle_json,
                submitted_by=checksum(submitted_by) if submitted_by else None,
                received_at=now,
                status=JOB_PENDING,
                attempts=0,
            )
            .on_conflict_do_nothing()
        )
        result = await self.conn.execute(stmt)
        if result.rowcount != 1:
            return False
        if stages:
            await self.conn.execute(
                StageReceipt.__table__.insert(),
                [
                    {
                        "job_id": job_id,
                        "stage": s.stage,
                        "worker": checksum(s.worker),
                        "layer_start": s.layer_start,
                        "layer_end": s.layer_end,
                        "token_count": s.token_count,
                        "work_units": s.work_units,
                        "signature": s.signature,
                    }
                    for s in stages
                ],
            )
        return True

    async def set_job_status(
        self, job_id: str, status: str, *, claimed_by: str | None = None, error: str | None = None
    ) -> None:
        if status not in JOB_STATUSES:
            raise LedgerError(f"unknown job status {status!r} (one of {', '.join(JOB_STATUSES)})")
        values: dict[str, Any] = {"status": status}
        if status == JOB_VALIDATING:
            values.update(claimed_by=claimed_by, claimed_at=_now(), attempts=Job.attempts + 1)
        if error is not None:
            values["last_error"] = error
        result = await self.conn.execute(
            update(Job).where(Job.job_id == hash32(job_id, "job_id")).values(**values)
        )
        if result.rowcount != 1:
            raise LedgerError(f"unknown job {job_id}")

    # --- verdicts and the journal --------------------------------------------------------------------

    async def record_verdict(
        self,
        job_id: str,
        outcome: str,
        *,
        blamed_stage: int | None = None,
        reason: str | None = None,
        figures: dict[str, Any] | None = None,
        validator: str | None = None,
    ) -> bool:
        """Record the one verdict of a job. False, and nothing written, if the job already has one."""
        if outcome not in OUTCOMES:
            raise LedgerError(f"unknown outcome {outcome!r} (one of {', '.join(OUTCOMES)})")
        if (outcome == BLAMED) != (blamed_stage is not None):
            raise LedgerError("a blamed verdict names its blamed stage, and only a blamed verdict does")
        await self.lock()
        stmt = (
            self._insert(Verdict.__table__)
            .values(
                job_id=hash32(job_id, "job_id"),
                outcome=outcome,
                blamed_stage=blamed_stage,
                reason=reason,
                figures=figures,
                validator=checksum(validator) if validator else None,
                decided_at=_now(),
            )
            .on_conflict_do_nothing()
        )
        try:
            return (await self.conn.execute(stmt)).rowcount == 1
        except IntegrityError as error:  # the foreign key: there is no such job
            raise LedgerError(f"no job {job_id} in the ledger: record its bundle before its verdict") from error

    async def append(self, entries: Sequence[NewEntry]) -> list[Entry]:
        """Journal `entries` in order, skipping any already journaled; returns those written."""
        for new in entries:
            if not isinstance(new, NewEntry):
                raise LedgerError(f"append takes journal entries, not {type(new).__name__}")
        head_seq, head_hash = await self.lock()
        fresh = await self._unseen(entries)
        if not fresh:
            return []
        written = journal.chain(fresh, head_seq=head_seq, head_hash=head_hash, at_ms=int(time.time() * 1000))
        await self._insert_entries(written)
        last = written[-1]
        await self.conn.execute(
            update(JournalHead).where(JournalHead.id == 1).values(seq=last.seq, entry_hash=last.entry_hash)
        )
        self._head = (last.seq, last.entry_hash)
        await self._update_totals(written)
        return written

    async def _unseen(self, entries: Sequence[NewEntry]) -> list[NewEntry]:
        """The entries whose identity (and ref) is neither journaled already nor repeated earlier in the batch."""
        by_kind: dict[str, list[NewEntry]] = {}
        for e in entries:
            by_kind.setdefault(e.kind, []).append(e)
        seen: set[tuple[Any, ...]] = set()
        seen_refs: set[str] = set()
        rewards = by_kind.get(journal.REWARD, [])
        for chunk in _chunks(sorted({e.job_id for e in rewards})):
            rows = await self.conn.execute(
                select(_J.c.job_id, _J.c.stage).where(_J.c.kind == journal.REWARD, _J.c.job_id.in_(chunk))
            )
            seen.update((journal.REWARD, r.job_id, r.stage) for r in rows)
        for kind, column, attr in (
            (journal.SLASH, _J.c.evidence_hash, "evidence_hash"),
            (journal.SOFT_INVALIDATION, _J.c.job_id, "job_id"),
            (journal.ANCHOR, _J.c.epoch, "epoch"),
        ):
            keys = sorted({getattr(e, attr) for e in by_kind.get(kind, [])})
            for chunk in _chunks(keys):
                rows = await self.conn.execute(select(column).where(_J.c.kind == kind, column.in_(chunk)))
                seen.update((kind, value) for (value,) in rows)
        refs = sorted({e.ref for e in entries if e.ref is not None})
        for chunk in _chunks(refs):
            rows = await self.conn.execute(select(_J.c.ref).where(_J.c.ref.in_(chunk)))
            seen_refs.update(value for (value,) in rows)
        fresh: list[NewEntry] = []
        for e in entries:
            identity = e.identity()
            if identity is not None:
                if identity in seen:
                    continue
                seen.add(identity)
            if e.ref is not None:
                if e.ref in seen_refs:
                    continue
                seen_refs.add(e.ref)
            fresh.append(e)
        return fresh

    async def _update_totals(self, written: Sequence[Entry]) -> None:
        """Fold the new entries into the per-worker totals that the leaderboard reads."""
        deltas: dict[str, dict[str, int]] = {}
        for e in written:
            if e.worker is None:
                continue
            d = deltas.setdefault(
                e.worker, {"rewards": 0, "accepted_jobs": 0, "work_units": 0, "slashes": 0, "slashed_amount": 0}
            )
            d["last_seq"] = e.seq
            if e.kind == journal.REWARD:
                d["rewards"] += e.amount
                d["accepted_jobs"] += 1
                d["work_units"] += e.work_units or 0
            elif e.kind == journal.SLASH:
                d["slashes"] += 1
                d["slashed_amount"] += e.amount
        if not deltas:
            return
        if self.ledger.dialect == "postgresql":
            await self._add_totals_in_sql(deltas)
            return
        await self._add_totals_in_python(deltas)

    async def _add_totals_in_python(self, deltas: dict[str, dict[str, int]]) -> None:
        """SQLite: read the workers' totals, add, write back, with plain driver statements (the rows are
        few and the database is in-process, so this costs microseconds a row). Safe because the caller
        holds the write lock (BEGIN IMMEDIATE)."""
        current: dict[str, tuple[Any, ...]] = {}
        for chunk in _chunks(sorted(deltas)):
            marks = ",".join("?" * len(chunk))
            rows = await self.conn.exec_driver_sql(
                "SELECT address, rewards, accepted_jobs, work_units, slashes, slashed_amount FROM workers"
                f" WHERE address IN ({marks})",
                tuple(chunk),
            )
            current.update({r[0]: r for r in rows})
        now = _now().strftime("%Y-%m-%d %H:%M:%S.%f")  # SQLAlchemy's SQLite DATETIME storage format
        pad = f"0{WEI_DIGITS}d"
        inserts, updates = [], []
        for address, d in deltas.items():
            row = current.get(address)
            if row is None:
                inserts.append(
                    (address, format(0, pad), format(d["rewards"], pad), d["accepted_jobs"], d["work_units"],
                     d["slashes"], format(d["slashed_amount"], pad), d["last_seq"], now, now)
                )
            else:
                updates.append(
                    (format(int(row[1]) + d["rewards"], pad), row[2] + d["accepted_jobs"], row[3] + d["work_units"],
                     row[4] + d["slashes"], format(int(row[5]) + d["slashed_amount"], pad), d["last_seq"], now, address)
                )
        if inserts:
            await self.conn.exec_driver_sql(
                "INSERT INTO workers (address, stake, rewards, accepted_jobs, work_units, slashes, slashed_amount,"
                " last_seq, first_seen, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                inserts,
            )
            await self._count_new_workers(len(inserts))
        if updates:
            await self.conn.exec_driver_sql(
                "UPDATE workers SET rewards = ?, accepted_jobs = ?, work_units = ?, slashes = ?, slashed_amount = ?,"
                " last_seq = ?, updated_at = ? WHERE address = ?",
                updates,
            )

    async def _add_totals_in_sql(self, deltas: dict[str, dict[str, int]]) -> None:
        """PostgreSQL: one INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO UPDATE that adds the deltas
        in SQL (NUMERIC arithmetic is exact): one statement for the whole batch, no read first. SQLite
        stores wei as padded text, so it adds in Python instead."""
        ordered = sorted(deltas.items())
        now = _now()
        result = await self.conn.execute(
            text(
                "INSERT INTO workers (address, stake, rewards, accepted_jobs, work_units, slashes, slashed_amount,"
                " last_seq, first_seen, updated_at)"
                " SELECT a, 0, r, j, u, s, x, q, :now, :now FROM unnest("
                "CAST(:a AS varchar[]), CAST(:r AS numeric[]), CAST(:j AS bigint[]), CAST(:u AS bigint[]),"
                " CAST(:s AS bigint[]), CAST(:x AS numeric[]), CAST(:q AS bigint[])) AS t(a, r, j, u, s, x, q)"
                " ON CONFLICT (address) DO UPDATE SET rewards = workers.rewards + excluded.rewards,"
                " accepted_jobs = workers.accepted_jobs + excluded.accepted_jobs,"
                " work_units = workers.work_units + excluded.work_units,"
                " slashes = workers.slashes + excluded.slashes,"
                " slashed_amount = workers.slashed_amount + excluded.slashed_amount,"
                " last_seq = excluded.last_seq, updated_at = excluded.updated_at"
                " RETURNING (xmax = 0)"  # true for a row this statement inserted
            ),
            {
                "now": now,
                "a": [w for w, _ in ordered],
                "r": [Decimal(d["rewards"]) for _, d in ordered],
                "j": [d["accepted_jobs"] for _, d in ordered],
                "u": [d["work_units"] for _, d in ordered],
                "s": [d["slashes"] for _, d in ordered],
                "x": [Decimal(d["slashed_amount"]) for _, d in ordered],
                "q": [d["last_seq"] for _, d in ordered],
            },
        )
        await self._count_new_workers(sum(1 for (inserted,) in result if inserted))

    async def _count_new_workers(self, n: int) -> None:
        if n:
            await self.conn.execute(
                update(JournalHead).where(JournalHead.id == 1).values(worker_count=JournalHead.worker_count + n)
            )

    async def _insert_entries(self, written: Sequence[Entry]) -> None:
        """Write journal rows: on PostgreSQL as one INSERT ... SELECT FROM unnest(arrays) (one statement per
        batch instead of one per row), on SQLite as a driver-level executemany of ready-made tuples. Both
        store exactly what the models' types would (wei padded on SQLite, JSON as text)."""
        if self.ledger.dialect == "sqlite":
            pad = f"0{WEI_DIGITS}d"
            await self.conn.exec_driver_sql(
                "INSERT INTO journal (seq, kind, worker, amount, job_id, stage, work_units, evidence_hash, epoch, ref,"
                " data, at_ms, prev_hash, entry_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.seq, e.kind, e.worker, format(e.amount, pad), e.job_id, e.stage, e.work_units, e.evidence_hash,
                     e.epoch, e.ref, None if e.data is None else _json_text(e.data), e.at_ms, e.prev_hash, e.entry_hash)
                    for e in written
                ],
            )
            return
        if self.ledger.dialect != "postgresql":
            await self.conn.execute(_J.insert(), [_entry_row(e) for e in written])
            return
        columns = {
            "seq": "bigint",
            "kind": "varchar",
            "worker": "varchar",
            "amount": "numeric",
            "job_id": "varchar",
            "stage": "integer",
            "work_units": "bigint",
            "evidence_hash": "varchar",
            "epoch": "bigint",
            "ref": "varchar",
            "data": "json",
            "at_ms": "bigint",
            "prev_hash": "varchar",
            "entry_hash": "varchar",
        }
        arrays: dict[str, list[Any]] = {name: [] for name in columns}
        for e in written:
            for name in columns:
                arrays[name].append(getattr(e, name))
        arrays["amount"] = [Decimal(v) for v in arrays["amount"]]
        arrays["data"] = [None if v is None else _json_text(v) for v in arrays["data"]]
        names = ", ".join(columns)
        casts = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in columns.items())
        await self.conn.execute(text(f"INSERT INTO journal ({names}) SELECT * FROM unnest({casts})"), arrays)

    async def set_stake(self, address: str, stake: int, block: int | None = None) -> None:
        """The stake the chain reports for `address` (at `block`); creates the worker if new."""
        address = checksum(address)
        await self.lock()  # a new worker changes the count kept in the head row
        known = (await self.conn.execute(select(_W.c.address).where(_W.c.address == address))).first()
        now = _now()
        stmt = (
            self._insert(_W)
            .values(
                address=address,
                stake=stake,
                stake_block=block,
                rewards=0,
                accepted_jobs=0,
                work_units=0,
                slashes=0,
                slashed_amount=0,
                first_seen=now,
                updated_at=now,
            )
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[_W.c.address], set_={"stake": stmt.excluded.stake, "stake_block": block, "updated_at": now}
        )
        await self.conn.execute(stmt)
        if known is None:
            await self._count_new_workers(1)

    # --- chain outbox and cursor ---------------------------------------------------------------------

    async def enqueue(self, kind: str, key: str, payload: dict[str, Any]) -> int | None:
        """Owe the chain a transaction; None when (kind, key) is already queued (or sent)."""
        await self.lock()
        now = _now()
        stmt = (
            self._insert(ChainOutbox.__table__)
            .values(kind=kind, key=key, payload=payload, status=OUTBOX_PENDING, attempts=0, created_at=now, updated_at=now)
            .on_conflict_do_nothing()
            .returning(ChainOutbox.id)
        )
        return (await self.conn.execute(stmt)).scalar_one_or_none()

    async def set_cursor(self, name: str, block: int) -> None:
        now = _now()
        stmt = self._insert(ChainCursor.__table__).values(name=name, block=block, updated_at=now)
        stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={"block": block, "updated_at": now})
        await self.conn.execute(stmt)

    # --- epochs --------------------------------------------------------------------------------------

    async def close_epoch(self) -> EpochRecord | None:
        """Close an epoch over every entry since the last one; None when there is none."""
        head_seq, _ = await self.lock()
        last = (
            await self.conn.execute(select(Epoch.number, Epoch.last_seq).order_by(Epoch.number.desc()).limit(1))
        ).one_or_none()
        number = 1 if last is None else last.number + 1
        first_seq = 1 if last is None else last.last_seq + 1
        if head_seq < first_seq:
            return None
        hashes = (
            await self.conn.execute(
                select(_J.c.entry_hash).where(_J.c.seq.between(first_seq, head_seq)).order_by(_J.c.seq)
            )
        ).scalars().all()
        # Under the head lock the worker totals are exactly the cumulative rewards up to head_seq.
        rows = (await self.conn.execute(select(_W.c.address, _W.c.rewards).where(_W.c.rewards > 0))).all()
        cumulative = {r.address: r.rewards for r in rows}
        record = {
            "number": number,
            "first_seq": first_seq,
            "last_seq": head_seq,
            "entry_count": len(hashes),
            "entries_root": epoch_math.entries_root(hashes),
            "rewards_root": epoch_math.rewards_root(cumulative),
            "total_rewards": sum(cumulative.values()),
            "closed_at": _now(),
        }
        await self.conn.execute(Epoch.__table__.insert().values(**record))
        if cumulative:
            await self.conn.execute(
                EpochReward.__table__.insert(),
                [{"epoch": number, "worker": w, "cumulative": a} for w, a in cumulative.items()],
            )
        log.info("closed epoch %d: entries %d..%d, %d workers rewarded", number, first_seq, head_seq, len(cumulative))
        return EpochRecord(**record, anchor_tx=None, anchored_at=None)

    async def mark_anchored(self, number: int, tx_hash: str) -> Entry | None:
        """Epoch `number` is anchored on chain by `tx_hash`: store it and journal an anchor entry."""
        tx_hash = hash32(tx_hash, "tx_hash")
        await self.lock()
        row = (await self.conn.execute(select(Epoch).where(Epoch.number == number))).one_or_none()
        if row is None:
            raise LedgerError(f"no epoch {number}")
        if row.anchor_tx is None:
            await self.conn.execute(
                update(Epoch).where(Epoch.number == number).values(anchor_tx=tx_hash, anchored_at=_now())
            )
        written = await self.append(
            [
                journal.anchor(
                    number,
                    data={
                        "entries_root": row.entries_root,
                        "rewards_root": row.rewards_root,
                        "entry_count": row.entry_count,
                        "tx_hash": row.anchor_tx or tx_hash,
                    },
                )
            ]
        )
        return written[0] if written else None


class Ledger:
    """The ledger over one database. See the module docstring for the calls."""

    def __init__(self, url: str, engine: AsyncEngine, write_engine: AsyncEngine) -> None:
        self.url = url
        self.engine = engine
        self.write_engine = write_engine
        self.dialect = engine.dialect.name
        self._reward_trees: dict[int, epoch_math.RewardTree] = {}  # the latest epochs' trees, by number

    @property
    def safe_url(self) -> str:
        """The database URL without its password, fit for logs and error messages."""
        return self.engine.url.render_as_string(hide_password=True)

    # --- opening -------------------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, must_exist: bool = False) -> Ledger:
        """Open the ledger at `url` (any SQLAlchemy URL; `async_url` names the async driver) and bring its
        schema to head.
        `must_exist`: for commands that only read, a SQLite file that is not there is an error (LedgerError)
        instead of a fresh, empty ledger that would answer "unknown" to everything."""
        url = async_url(url)
        if must_exist:
            _require_sqlite_file(url)
        if url.startswith("sqlite"):
            try:
                await asyncio.to_thread(_use_wal, url)
            except sqlite3.Error as error:
                raise LedgerError(f"cannot open the ledger at {url}: {error}") from error
            engine = _sqlite_engine(url, immediate=False)
            write_engine = _sqlite_engine(url, immediate=True)
        elif url.startswith("postgresql"):
            engine = create_async_engine(url, pool_pre_ping=True)
            write_engine = engine
        else:
            raise LedgerError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")
        ledger = cls(url, engine, write_engine)
        try:
            try:
                if migrate:
                    await ledger.upgrade()
                async with ledger.write_engine.begin() as conn:
                    await conn.execute(
                        ledger._insert(JournalHead.__table__)
                        .values(id=1, seq=0, entry_hash=journal.GENESIS_HASH)
                        .on_conflict_do_nothing()
                    )
            except (ProgrammingError, OperationalError) as error:
                if "journal_head" not in str(error):
                    raise LedgerError(f"cannot open the ledger at {ledger.safe_url}: {error.orig or error}") from error
                raise LedgerError(
                    "this database has no ledger schema yet: run `stagewise ledger migrate` (or alembic upgrade head)"
                ) from error
            except (DBAPIError, OSError) as error:
                cause = getattr(error, "orig", None) or error
                raise LedgerError(f"cannot open the ledger at {ledger.safe_url}: {cause}") from error
        except BaseException:
            await ledger.close()
            raise
        return ledger

    async def upgrade(self, revision: str = "head") -> None:
        """Run the Alembic migrations up to `revision` on this database (what `alembic upgrade` does)."""
        if not (MIGRATIONS_DIR / "env.py").exists():  # an install without the migrations: plain create
            async with self.write_engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
            return
        async with self.write_engine.begin() as conn:
            if self.dialect == "postgresql":
                # Two nodes starting together on a fresh database: the second waits, then finds the
                # schema at head. (SQLite's BEGIN IMMEDIATE already serialises them.)
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            await conn.run_sync(_run_upgrade, revision)

    async def close(self) -> None:
        await self.engine.dispose()
        if self.write_engine is not self.engine:
            await self.write_engine.dispose()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _insert(self, table: Table) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[LedgerTx]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        async with self.write_engine.begin() as conn:
            yield LedgerTx(self, conn)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    # --- one-call writes -----------------------------------------------------------------------------

    async def record_bundle(self, job_id: str, bundle_json: str, stages: Sequence[StageRecord], **kw: Any) -> bool:
        async with self.transaction() as tx:
            return await tx.record_bundle(job_id, bundle_json, stages, **kw)

    async def record_verdict(self, job_id: str, outcome: str, **kw: Any) -> bool:
        async with self.transaction() as tx:
            return await tx.record_verdict(job_id, outcome, **kw)

    async def append(self, entries: Sequence[NewEntry]) -> list[Entry]:
        async with self.transaction() as tx:
            return await tx.append(entries)

    async def _add_totals_in_sql(self, deltas: dict[str, dict[str, int]]) -> None:
        """PostgreSQL: INSERT ... ON CONFLICT DO UPDATE, adding the deltas in SQL (NUMERIC arithmetic is
        exact), with no read first. SQLite stores wei as padded text, so it adds in Python instead."""
        from sqlalchemy.dialects.postgresql import insert

        now = _now()
        rows = [
            {
                "address": address,
                "stake": 0,
                **{k: d[k] for k in ("rewards", "accepted_jobs", "work_units", "slashes", "slashed_amount", "last_seq")},
                "first_seen": now,
                "updated_at": now,
            }
            for address, d in sorted(deltas.items())
        ]
        stmt = insert(_W)
        new = stmt.excluded
        stmt = stmt.on_conflict_do_update(
                index_elements=[_W.c.address],
                set_={
                    "rewards": _W.c.rewards + new.rewards,
                    "accepted_jobs": _W.c.accepted_jobs + new.accepted_jobs,
                    "work_units": _W.c.work_units + new.work_units,
                    "slashes": _W.c.slashes + new.slashes,
                    "slashed_amount": _W.c.slashed_amount + new.slashed_amount,
                    "last_seq": new.last_seq,
                    "updated_at": new.updated_at,
                },
            )
        await self.conn.execute(stmt, rows)

    async def set_stake(self, address: str, stake: int, block: int | None = None) -> None:
        async with self.transaction() as tx:
            await tx.set_stake(address, stake, block)

    async def set_job_status(self, job_id: str, status: str, **kw: Any) -> None:
        async with self.transaction() as tx:
            await tx.set_job_status(job_id, status, **kw)

    async def enqueue(self, kind: str, key: str, payload: dict[str, Any]) -> int | None:
        async with self.transaction() as tx:
            return await tx.enqueue(kind, key, payload)

    async def close_epoch(self) -> EpochRecord | None:
        async with self.transaction() as tx:
            return await tx.close_epoch()

    async def mark_anchored(self, number: int, tx_hash: str) -> Entry | None:
        async with self.transaction() as tx:
            return await tx.mark_anchored(number, tx_hash)

    async def set_cursor(self, name: str, block: int) -> None:
        async with self.transaction() as tx:
            await tx.set_cursor(name, block)

    async def get_cursor(self, name: str) -> int | None:
        async with self.reading() as conn:
            return (await conn.execute(select(ChainCursor.block).where(ChainCursor.name == name))).scalar_one_or_none()

    # --- outbox --------------------------------------------------------------------------------------

    async def take_outbox(
        self, limit: int = 10, *, kinds: Sequence[str] | None = None, stale_after_s: float = 300.0
    ) -> list[OutboxRow]:
        """Claim up to `limit` rows to send: pending ones, and 'sending' ones left by a sender that died
        more than `stale_after_s` ago. Claimed rows become 'sending' with one more attempt."""
        now = _now()
        stale = now - dt.timedelta(seconds=stale_after_s)
        t = ChainOutbox.__table__
        query = (
            select(t)
            .where(or_(t.c.status == OUTBOX_PENDING, and_(t.c.status == OUTBOX_SENDING, t.c.updated_at < stale)))
            .order_by(t.c.id)
            .limit(limit)
        )
        if kinds:
            query = query.where(t.c.kind.in_(list(kinds)))
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        async with self.transaction() as tx:
            rows = (await tx.conn.execute(query)).all()
            if not rows:
                return []
            await tx.conn.execute(
                update(t)
                .where(t.c.id.in_([r.id for r in rows]))
                .values(status=OUTBOX_SENDING, attempts=t.c.attempts + 1, updated_at=now)
            )
        return [
            OutboxRow(r.id, r.kind, r.key, r.payload, OUTBOX_SENDING, r.attempts + 1, r.last_error, r.tx_hash)
            for r in rows
        ]

    async def mark_sent(self, outbox_id: int, tx_hash: str) -> None:
        t = ChainOutbox.__table__
        async with self.transaction() as tx:
            await tx.conn.execute(
                update(t)
                .where(t.c.id == outbox_id)
                .values(status=OUTBOX_SENT, tx_hash=hash32(tx_hash, "tx_hash"), last_error=None, updated_at=_now())
            )

    async def mark_failed(self, outbox_id: int, error: str, *, retry: bool = True) -> None:
        t = ChainOutbox.__table__
        async with self.transaction() as tx:
            await tx.conn.execute(
                update(t)
                .where(t.c.id == outbox_id)
                .values(status=OUTBOX_PENDING if retry else OUTBOX_FAILED, last_error=error, updated_at=_now())
            )

    async def outbox(self, status: str | None = None) -> list[OutboxRow]:
        t = ChainOutbox.__table__
        query = select(t).order_by(t.c.id)
        if status:
            query = query.where(t.c.status == status)
        async with self.reading() as conn:
            rows = (await conn.execute(query)).all()
        return [OutboxRow(r.id, r.kind, r.key, r.payload, r.status, r.attempts, r.last_error, r.tx_hash) for r in rows]

    # --- reading -------------------------------------------------------------------------------------

    async def job(self, job_id: str) -> JobRecord | None:
        async with self.reading() as conn:
            row = (await conn.execute(select(Job.__table__).where(Job.job_id == hash32(job_id, "job_id")))).one_or_none()
        return None if row is None else JobRecord(**row._mapping)

    async def receipts(self, job_id: str) -> list[StageRecord]:
        t = StageReceipt.__table__
        async with self.reading() as conn:
            rows = (await conn.execute(select(t).where(t.c.job_id == hash32(job_id, "job_id")).order_by(t.c.stage))).all()
        return [
            StageRecord(r.stage, r.worker, r.layer_start, r.layer_end, r.token_count, r.work_units, r.signature)
            for r in rows
        ]

    async def verdict(self, job_id: str) -> VerdictRecord | None:
        async with self.reading() as conn:
            row = (
                await conn.execute(select(Verdict.__table__).where(Verdict.job_id == hash32(job_id, "job_id")))
            ).one_or_none()
        return None if row is None else VerdictRecord(**row._mapping)

    async def head(self) -> tuple[int, str]:
        """(seq, hash) of the last journal entry; (0, 32 zero bytes) for an empty journal."""
        async with self.reading() as conn:
            row = (await conn.execute(select(JournalHead.seq, JournalHead.entry_hash).where(JournalHead.id == 1))).one()
        return row.seq, row.entry_hash

    async def entries(self, after_seq: int = 0, limit: int = 1000) -> list[Entry]:
        """Journal entries in order, starting after `after_seq`."""
        async with self.reading() as conn:
            rows = (await conn.execute(select(_J).where(_J.c.seq > after_seq).order_by(_J.c.seq).limit(limit))).all()
        return [journal.entry_from_row(r) for r in rows]

    async def leaderboard(self, offset: int = 0, limit: int = 50) -> Page[WorkerStanding]:
        async with self.reading() as conn:
            return await queries.leaderboard(conn, offset, limit)

    async def worker(self, address: str) -> WorkerStanding | None:
        async with self.reading() as conn:
            return await queries.worker_standing(conn, checksum(address))

    async def worker_history(
        self, address: str, offset: int = 0, limit: int = 50, kinds: Sequence[str] | None = None
    ) -> Page[Entry]:
        async with self.reading() as conn:
            return await queries.worker_history(conn, checksum(address), offset, limit, kinds)

    async def slashes(self, offset: int = 0, limit: int = 50, worker: str | None = None) -> Page[SlashRecord]:
        async with self.reading() as conn:
            return await queries.slashes(conn, offset, limit, checksum(worker) if worker else None)

    async def epochs(self, offset: int = 0, limit: int = 50) -> Page[EpochRecord]:
        async with self.reading() as conn:
            return await queries.epochs(conn, offset, limit)

    async def epoch(self, number: int | None = None) -> EpochRecord | None:
        """Epoch `number`, or the latest one."""
        async with self.reading() as conn:
            return await queries.epoch(conn, number)

    async def reward_proof(self, worker: str, epoch: int | None = None) -> epoch_math.RewardProof | None:
        """The claim proof of `worker`'s cumulative reward in `epoch` (default: the latest); None if the
        epoch does not exist or the worker had earned nothing by then."""
        async with self.reading() as conn:
            record = await queries.epoch(conn, epoch)
            if record is None:
                return None
            tree = self._reward_trees.get(record.number)
            if tree is None:
                t = EpochReward.__table__
                rows = (await conn.execute(select(t.c.worker, t.c.cumulative).where(t.c.epoch == record.number))).all()
                tree = epoch_math.RewardTree.build(record.number, {r.worker: r.cumulative for r in rows})
                self._reward_trees[record.number] = tree  # a closed epoch's rewards never change
                while len(self._reward_trees) > REWARD_TREES_KEPT:
                    self._reward_trees.pop(next(iter(self._reward_trees)))
        return tree.proof(checksum(worker))

    async def entry_proof(self, seq: int) -> epoch_math.EntryProof | None:
        """The proof that entry `seq` is in its epoch; None while the entry is in no closed epoch."""
        async with self.reading() as conn:
            row = (
                await conn.execute(select(Epoch).where(Epoch.first_seq <= seq, Epoch.last_seq >= seq))
            ).one_or_none()
            if row is None:
                return None
            hashes = (
                await conn.execute(
                    select(_J.c.entry_hash).where(_J.c.seq.between(row.first_seq, row.last_seq)).order_by(_J.c.seq)
                )
            ).scalars().all()
        return epoch_math.entry_proof(row.number, row.first_seq, hashes, seq)

    async def verify(self, progress: Any = None) -> VerifyReport:
        """Recompute the journal's hash chain, the worker totals and every epoch's roots."""
        from ledger.audit import verify

        return await verify(self, progress)


def _run_upgrade(sync_conn: Any, revision: str) -> None:
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)  # opening a ledger at head is not news; a change is, below
    try:
        from alembic import command
        from alembic.config import Config
        from alembic.migration import MigrationContext

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = sync_conn
        before = MigrationContext.configure(sync_conn).get_current_revision()
        command.upgrade(config, revision)
        after = MigrationContext.configure(sync_conn).get_current_revision()
    finally:
        alembic_log.setLevel(level)
    if after != before:
        log.info("ledger schema migrated from %s to %s", before or "empty", after)


def _require_sqlite_file(url: str) -> None:
    from sqlalchemy.engine import make_url

    if not url.startswith("sqlite"):
        return
    path = make_url(url).database
    if path and path != ":memory:" and not path.startswith("file:") and not os.path.exists(path):
        raise LedgerError(
            f"there is no ledger at {path}: point at a validator's ledger with --db URL (or STAGEWISE_DB), e.g. "
            "--db sqlite:///path/to/ledger.db or --db postgresql://user@host/db"
        )


def _use_wal(url: str, timeout_s: float = 60.0) -> None:
    """Put the SQLite database at `url` in WAL mode, once, before any pooled connection opens it.

    WAL is a property of the file, so later connections get it without asking. Switching modes takes an
    exclusive lock that SQLite does not wait for (the busy timeout does not apply), so nodes opening a fresh
    database together would get "database is locked" from a PRAGMA on connect; here the switch is retried.
    """
    from sqlalchemy.engine import make_url

    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=timeout_s)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def _sqlite_engine(url: str, *, immediate: bool) -> AsyncEngine:
    """A SQLite engine (the file already in WAL mode: `_use_wal`) whose transactions begin explicitly: BEGIN
    IMMEDIATE for the writer, so that two writers queue on the database lock instead of failing when one
    upgrades a read to a write."""
    engine = create_async_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB: the journal's indexes stay in memory
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
