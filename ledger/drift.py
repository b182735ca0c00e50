"""Each worker's running sequential test over its accepted low-precision jobs, and the workers it flagged
(PROTOCOL I8: a subtle cheat whose single jobs pass is caught by a worker's running figures across jobs).

The statistics are the validator's (node/toploc/job_statistics.py); the ledger keeps their state, so that a
restart or another validator process on the same ledger goes on from it. `running_tests` and `save_running_tests`
are called inside the transaction that records the verdict of the job the figures come from (`LedgerTx`), so a
job adds to a worker's test exactly once, and a flag is written with that verdict or not at all. A flag moves no
money: it keeps the worker out of this ledger's groups for a while (node/orchestration/bans.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.db import insert
from ledger.journal import checksum
from ledger.models import DriftFlag, DriftTest

_T = DriftTest.__table__
_F = DriftFlag.__table__


@dataclass(frozen=True)
class RunningTest:
    """A worker's test since it last restarted: the summed log-likelihood ratio and how many jobs it holds."""

    log_ratio: float = 0.0
    jobs: int = 0


@dataclass(frozen=True)
class Flag:
    job_id: str
    worker: str
    model_id: str
    precision: str
    stage: int
    log_ratio: float
    jobs: int
    at_ms: int


async def running_tests(conn: AsyncConnection, model_id: str, precision: str,
                        workers: Sequence[str]) -> dict[str, RunningTest]:
    """The running test of each of `workers` (checksummed) for a model and precision; absent ones are fresh."""
    addresses = sorted({checksum(w) for w in workers})
    rows = (await conn.execute(
        select(_T.c.worker, _T.c.log_ratio, _T.c.jobs)
        .where(_T.c.model_id == model_id, _T.c.precision == precision, _T.c.worker.in_(addresses))
    )).all()
    found = {row.worker: RunningTest(float(row.log_ratio), int(row.jobs)) for row in rows}
    return {address: found.get(address, RunningTest()) for address in addresses}


async def save_running_tests(conn: AsyncConnection, model_id: str, precision: str,
                             tests: Mapping[str, RunningTest]) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    rows = [{"worker": checksum(worker), "model_id": model_id, "precision": precision,
             "log_ratio": round(test.log_ratio, 6), "jobs": test.jobs, "updated_at": now}
            for worker, test in tests.items()]
    if not rows:
        return
    statement = insert(conn.dialect.name, _T).values(rows)
    await conn.execute(statement.on_conflict_do_update(
        index_elements=["worker", "model_id", "precision"],
        set_={"log_ratio": statement.excluded.log_ratio, "jobs": statement.excluded.jobs,
              "updated_at": statement.excluded.updated_at},
    ))


async def record_flag(conn: AsyncConnection, flag: Flag) -> bool:
    """Write a flag; False (nothing written) when that job already flagged someone."""
    row = {**flag.__dict__, "worker": checksum(flag.worker), "log_ratio": round(flag.log_ratio, 6)}
    statement = insert(conn.dialect.name, _F).values(row).on_conflict_do_nothing(index_elements=["job_id"])
    return (await conn.execute(statement)).rowcount == 1


async def latest_flag_ms(conn: AsyncConnection, workers: Sequence[str]) -> dict[str, int]:
    """When each of `workers` was last flagged (ms), in one statement; workers never flagged are left out."""
    addresses = sorted({checksum(w) for w in workers})
    if not addresses:
        return {}
    rows = (await conn.execute(
        select(_F.c.worker, func.max(_F.c.at_ms)).where(_F.c.worker.in_(addresses)).group_by(_F.c.worker)
    )).all()
    return {worker: int(at_ms) for worker, at_ms in rows}


async def flags(conn: AsyncConnection, *, worker: str | None = None, limit: int = 50) -> list[Flag]:
    """The newest flags, of one worker or of all."""
    query = select(_F).order_by(_F.c.at_ms.desc(), _F.c.job_id).limit(limit)
    if worker is not None:
        query = query.where(_F.c.worker == checksum(worker))
    return [Flag(row.job_id, row.worker, row.model_id, row.precision, row.stage, float(row.log_ratio), row.jobs,
                 int(row.at_ms)) for row in (await conn.execute(query)).all()]
