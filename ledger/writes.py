"""The ledger's writes: `LedgerTx`, one database transaction (from `Ledger.transaction()`).

Everything that must happen together happens in one transaction. A validator that has decided a job:

    async with ledger.transaction() as tx:
        if await tx.record_verdict(job_id, ACCEPTED, figures=figures, validator=me):   # False: already decided
            await tx.append([journal.reward(w, amount, job_id=job_id, stage=s, work_units=u) for ...])
            # or, when stage s is blamed:
            # await tx.append([journal.slash(w, amount, evidence_hash=h, job_id=job_id, stage=s, data=figures)])
            # await tx.enqueue("slash", h, {"worker": w, "amount": str(amount), "evidence_hash": h})
        await tx.set_job_status(job_id, "done")

Calls on a transaction, all idempotent (each also exists on `Ledger`, in a transaction of its own):
- `record_bundle(job_id, bundle_json, stages=[StageRecord...], ...) -> bool`: store a submitted bundle and its
  receipts, status "pending"; False (nothing written) when the job is already known (PROTOCOL I3).
- `record_verdict(job_id, outcome, blamed_stage=, reason=, figures=, validator=) -> bool`: one per job.
- `append([NewEntry...]) -> list[Entry]`: journal entries (build them with `ledger.journal.stake/unstake/
  reward/slash/soft_invalidation/anchor`); returns the entries written. An entry whose identity is already
  journaled (reward per job and stage, slash per evidence hash, soft invalidation per job, anchor per
  epoch, `ref` per chain event) is skipped, never an error (`ledger.appends`). Worker totals (the
  leaderboard) are updated in the same transaction.
- `record_sample(SampleRecord) -> Entry | None`: the dataset row of an accepted job and its `sample` entry
  (ledger.samples); SampleError for a job not accepted.
- `set_stake(address, stake, block=None)`: the stake the chain reports for a worker.
- `set_job_status(job_id, status, claimed_by=None, error=None)`: "pending" | "validating" | "done". The
  queue's claiming logic (SELECT ... FOR UPDATE SKIP LOCKED) is the validator's; the `jobs` columns
  status, claimed_by, claimed_at, attempts, last_error and the (status, received_at) index are for it.
- `enqueue(kind, key, payload) -> int | None`: a chain transaction owed (None: already queued; `ledger.outbox`).
- `close_epoch(number=None) -> EpochRecord | None`: close an epoch over the entries since the last one (None if
  none), as chain epoch `number`, its rewards on top of epoch `number - 1`'s (closed here or followed).
- `follow_epoch(FollowedEpochRecord, cumulative) -> bool`: a chain epoch another validator anchored.
- `abandon_epochs(from_number) -> [numbers]`: unanchored epochs whose number another validator took.
- `mark_anchored(number, tx_hash) -> Entry | None`: the epoch's roots are on chain; journals an anchor entry.
- `set_cursor(name, block)`.

Concurrency: every transaction that records a verdict, appends, enqueues, sets a stake or closes an epoch
first locks the journal head (SELECT ... FOR UPDATE on PostgreSQL; BEGIN IMMEDIATE on SQLite), so the
hash chain stays linear under any number of writers, and a duplicate is seen (and skipped) rather than
raced. Take row locks of your own (a job's queue row) before the first such call, never after, so that
every writer acquires locks in the same order.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import appends
from ledger import epochs as epoch_math
from ledger import journal, outbox, queries, samples
from ledger.db import LedgerError, insert
from ledger.journal import Entry, NewEntry, checksum, hash32
from ledger.models import (
    BLAMED,
    JOB_PENDING,
    JOB_STATUSES,
    JOB_VALIDATING,
    OUTCOMES,
    Epoch,
    EpochReward,
    FollowedEpoch,
    FollowedReward,
    Job,
    JournalEntry,
    JournalHead,
    StageReceipt,
    Verdict,
    Worker,
)
from ledger.queries import EpochRecord, FollowedEpochRecord, StageRecord

log = logging.getLogger(__name__)

_J = JournalEntry.__table__
_W = Worker.__table__


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class LedgerTx:
    """One database transaction on the ledger. Obtain it from `Ledger.transaction()`."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        self._head: tuple[int, str] | None = None

    def _insert(self, table: Table) -> Any:
        return insert(self.dialect, table)

    async def lock(self) -> tuple[int, str]:
        """Take the journal head's lock for the rest of this transaction; returns (seq, hash) of the head."""
        if self._head is None:
            query = select(JournalHead.seq, JournalHead.entry_hash).where(JournalHead.id == 1)
            if self.dialect == "postgresql":
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
        fresh = await appends.unseen(self.conn, entries)
        if not fresh:
            return []
        written = journal.chain(fresh, head_seq=head_seq, head_hash=head_hash, at_ms=int(time.time() * 1000))
        await appends.insert_entries(self.conn, written)
        last = written[-1]
        await self.conn.execute(
            update(JournalHead).where(JournalHead.id == 1).values(seq=last.seq, entry_hash=last.entry_hash)
        )
        self._head = (last.seq, last.entry_hash)
        await appends.update_totals(self.conn, written)
        return written

    async def record_sample(self, sample: samples.SampleRecord) -> Entry | None:
        """Store the dataset row of an accepted job and journal the `sample` entry that commits to it
        (ledger.samples); None when the job already has one. A job without an accepted verdict raises
        SampleError: a blamed job's output never becomes a row."""
        await self.lock()
        row_digest = await samples.record(self.conn, sample)
        if row_digest is None:
            return None
        written = await self.append([journal.sample(sample.job_id, row_digest)])
        return written[0] if written else None

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
            await appends.count_new_workers(self.conn, 1)

    # --- chain outbox and cursor ---------------------------------------------------------------------

    async def enqueue(self, kind: str, key: str, payload: dict[str, Any]) -> int | None:
        """Owe the chain a transaction; None when (kind, key) is already queued (or sent)."""
        await self.lock()
        return await outbox.enqueue(self.conn, kind, key, payload)

    async def set_cursor(self, name: str, block: int) -> None:
        await outbox.set_cursor(self.conn, name, block)

    # --- epochs --------------------------------------------------------------------------------------

    async def close_epoch(self, number: int | None = None) -> EpochRecord | None:
        """Close an epoch over every entry since this ledger's last one; None when there is none.

        `number` is the chain epoch it will be anchored as (default: the one after the latest this ledger
        closed or followed). Its rewards root commits to the cumulative rewards of epoch `number - 1`, this
        ledger's own or one it followed (LedgerError when it has neither), plus the rewards in its entries."""
        head_seq, _ = await self.lock()
        first_seq = ((await self.conn.execute(select(func.max(Epoch.last_seq)))).scalar_one_or_none() or 0) + 1
        if head_seq < first_seq:
            return None
        latest = await queries.latest_known_epoch(self.conn)
        number = latest + 1 if number is None else number
        if number <= latest:  # another process on this ledger closed it first, or it was followed meanwhile
            return None
        previous = await queries.epoch_cumulative(self.conn, number - 1) if number > 1 else {}
        if number > 1 and previous is None:
            raise LedgerError(f"epoch {number - 1} is neither closed nor followed here: its rewards are not known yet")
        rows = (
            await self.conn.execute(
                select(_J.c.entry_hash, _J.c.kind, _J.c.worker, _J.c.amount)
                .where(_J.c.seq.between(first_seq, head_seq))
                .order_by(_J.c.seq)
            )
        ).all()
        cumulative = dict(previous or {})
        for row in rows:
            if row.kind == journal.REWARD:
                cumulative[row.worker] = cumulative.get(row.worker, 0) + int(row.amount)
        cumulative = {w: a for w, a in cumulative.items() if a > 0}
        record = {
            "number": number,
            "first_seq": first_seq,
            "last_seq": head_seq,
            "entry_count": len(rows),
            "entries_root": epoch_math.entries_root([r.entry_hash for r in rows]),
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

    async def follow_epoch(self, followed: FollowedEpochRecord, cumulative: dict[str, int]) -> bool:
        """Record a chain epoch another validator anchored, with the cumulative rewards it closed with (its
        package checked against the chain by the caller); False when this ledger already has that epoch."""
        await self.lock()
        if await queries.has_epoch(self.conn, followed.number):
            return False
        await self.conn.execute(FollowedEpoch.__table__.insert().values(**followed.to_row(), followed_at=_now()))
        if cumulative:
            await self.conn.execute(
                FollowedReward.__table__.insert(),
                [{"epoch": followed.number, "worker": w, "cumulative": a} for w, a in cumulative.items() if a > 0],
            )
        log.info("followed epoch %d, anchored by %s (%d entries)", followed.number, followed.proposer, followed.entry_count)
        return True

    async def abandon_epochs(self, from_number: int) -> list[int]:
        """Give up this ledger's unanchored epochs numbered `from_number` or later (another validator anchored
        that number first): their entries wait for the next epoch this ledger closes, and their anchors are
        no longer owed. Returns the numbers given up; LedgerError for an anchored one."""
        await self.lock()
        rows = (await self.conn.execute(select(Epoch.number, Epoch.anchor_tx).where(Epoch.number >= from_number))).all()
        if any(r.anchor_tx is not None for r in rows):
            raise LedgerError(f"an epoch from {from_number} on is anchored: it cannot be given up")
        numbers = sorted(r.number for r in rows)
        if numbers:
            await self.conn.execute(EpochReward.__table__.delete().where(EpochReward.epoch.in_(numbers)))
            await self.conn.execute(Epoch.__table__.delete().where(Epoch.number.in_(numbers)))
            await outbox.supersede(self.conn, "anchor", [str(n) for n in numbers],
                                   "epoch number taken on chain by another validator's anchor")
            log.warning("gave up epochs %s: another validator anchored epoch %d first; their entries go into the "
                        "next epoch", numbers, from_number)
        return numbers

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
