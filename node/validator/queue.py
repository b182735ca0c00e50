"""The durable validation queue: the `jobs` table of the ledger, claimed row by row.

A bundle is a `jobs` row (status `pending`) before the API answers, so nothing accepted is lost. A
validator claims the oldest claimable job in its own short transaction:

- PostgreSQL: `SELECT … FOR UPDATE SKIP LOCKED`, so validator processes sharing one ledger each take a
  different row without waiting on one another;
- SQLite (one writer at a time anyway): a compare-and-set `UPDATE … WHERE status = <what we read>`, so
  two processes on one file still never take the same row.

A claim is a lease. A job whose claim is older than the lease (its validator crashed) is claimable again,
and a validator restarted under the same id reclaims its own unfinished jobs at once. A job claimed
MAX_ATTEMPTS times without a verdict stops being claimed (its `last_error` says why), so one poisonous
bundle cannot keep every validator busy. Two validators
finishing the same job cannot both win: the verdict row is unique per job (ledger/models.py), and
finishing requires the claim to still be ours.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.models import JOB_DONE, JOB_PENDING, JOB_VALIDATING, Job

MAX_ERROR_CHARS = 2000
MAX_ATTEMPTS = 5  # a job that failed this often (not a verdict: a crash) waits for an operator, with its last error


@dataclass(frozen=True)
class ClaimedJob:
    job_id: str
    bundle_json: str
    received_at: dt.datetime
    attempts: int


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class JobQueue:
    def __init__(self, engine: AsyncEngine, validator_id: str, lease_seconds: float) -> None:
        self.engine = engine
        self.validator_id = validator_id
        self.lease = dt.timedelta(seconds=lease_seconds)
        self._postgres = engine.dialect.name == "postgresql"

    def _claimable(self, now: dt.datetime, *, own_first: bool):
        stale = now - self.lease
        conditions = [Job.status == JOB_PENDING, (Job.status == JOB_VALIDATING) & (Job.claimed_at < stale)]
        if own_first:
            conditions.append((Job.status == JOB_VALIDATING) & (Job.claimed_by == self.validator_id))
        return or_(*conditions) & (Job.attempts < MAX_ATTEMPTS)

    async def claim(self, *, reclaim_own: bool = False) -> ClaimedJob | None:
        """Take the oldest claimable job, or None when there is nothing to do.

        `reclaim_own` (at start-up) also takes jobs this validator id claimed before it stopped.
        """
        now = utcnow()
        query = (
            select(Job.job_id, Job.bundle, Job.received_at, Job.attempts, Job.status, Job.claimed_at)
            .where(self._claimable(now, own_first=reclaim_own))
            .order_by(Job.received_at, Job.job_id)
            .limit(1)
        )
        async with self.engine.begin() as conn:
            if self._postgres:
                query = query.with_for_update(skip_locked=True, of=Job)
            row = (await conn.execute(query)).first()
            if row is None:
                return None
            claimed = await conn.execute(
                update(Job)
                .where(Job.job_id == row.job_id, Job.status == row.status, _same(Job.claimed_at, row.claimed_at))
                .values(status=JOB_VALIDATING, claimed_by=self.validator_id, claimed_at=now, attempts=Job.attempts + 1)
            )
            if claimed.rowcount != 1:
                return None  # another process took it between our read and our write (SQLite)
        return ClaimedJob(row.job_id, row.bundle, row.received_at, row.attempts + 1)

    async def finish(self, conn: AsyncConnection, job_id: str) -> bool:
        """Mark our claim done inside the verdict's transaction; False when the claim is no longer ours."""
        result = await conn.execute(
            update(Job)
            .where(Job.job_id == job_id, Job.status == JOB_VALIDATING, Job.claimed_by == self.validator_id)
            .values(status=JOB_DONE, last_error=None)
        )
        return result.rowcount == 1

    async def release(self, job_id: str, error: str) -> None:
        """Give a job back after a failure that is not the bundle's fault (the model could not load, …)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(Job)
                .where(Job.job_id == job_id, Job.claimed_by == self.validator_id, Job.status == JOB_VALIDATING)
                .values(status=JOB_PENDING, claimed_by=None, claimed_at=None, last_error=error[:MAX_ERROR_CHARS])
            )

    async def depth(self) -> int:
        async with self.engine.connect() as conn:
            query = select(func.count()).select_from(Job).where(Job.status.in_((JOB_PENDING, JOB_VALIDATING)))
            return int((await conn.execute(query)).scalar_one())


def _same(column, value):
    return column.is_(None) if value is None else column == value
