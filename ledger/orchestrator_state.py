"""What an orchestrator must not forget across a restart: the workers registered with it and the groups it
formed, per model. It moves no money, so it lives beside the journal, not in it.

`save_workers` on every accepted registration (those accepted together share one transaction; with the
registration's signed timestamp, so that a replayed older registration is refused after a restart as well),
`forget_worker` when a worker leaves,
`save_groups` after every regrouping, and `load_orchestrator_state` once, on start. Heartbeats are not
written: a restored worker has one heartbeat timeout to be heard from again.

`reserve_seeds` before a seed past the reserved counter is issued and `save_dispatch_progress` as tasks
finish keep the dispatch's progress, which `load_dispatch_progress` reads back for the next orchestrator.

Several validator processes may share one ledger; one orchestrates a model at a time, the holder of its lease
(`hold_lease`, renewed well before it runs out), and another takes the lease once it has run out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from ledger.db import insert
from ledger.models import OrchestratorDispatch, OrchestratorGroups, OrchestratorLease, OrchestratorWorker


@dataclass(frozen=True)
class SavedWorker:
    record: dict[str, Any]
    signed_at: float


@dataclass(frozen=True)
class OrchestratorState:
    workers: tuple[SavedWorker, ...] = ()
    groups: tuple[dict[str, Any], ...] = ()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


async def save_workers(ledger, model_id: str, records: list[tuple[str, dict[str, Any], float]]) -> None:
    """Upsert (address, record, signed_at) rows in one transaction; of one address given twice, the last."""
    now = _now()
    latest = {address: (record, signed_at) for address, record, signed_at in records}
    rows = [{"model_id": model_id, "address": address, "record": record, "signed_at": signed_at, "updated_at": now}
            for address, (record, signed_at) in latest.items()]
    if not rows:
        return
    async with ledger.transaction() as tx:
        statement = insert(tx.dialect, OrchestratorWorker.__table__).values(rows)
        await tx.conn.execute(statement.on_conflict_do_update(
            index_elements=["model_id", "address"],
            set_={"record": statement.excluded.record, "signed_at": statement.excluded.signed_at,
                  "updated_at": statement.excluded.updated_at},
        ))


async def forget_worker(ledger, model_id: str, address: str) -> None:
    async with ledger.transaction() as tx:
        await tx.conn.execute(delete(OrchestratorWorker).where(
            OrchestratorWorker.model_id == model_id, OrchestratorWorker.address == address))


async def save_groups(ledger, model_id: str, groups: list[dict[str, Any]]) -> None:
    row = {"model_id": model_id, "groups": groups, "updated_at": _now()}
    async with ledger.transaction() as tx:
        statement = insert(tx.dialect, OrchestratorGroups.__table__).values(**row)
        await tx.conn.execute(statement.on_conflict_do_update(
            index_elements=["model_id"], set_={"groups": row["groups"], "updated_at": row["updated_at"]}))


async def load_orchestrator_state(ledger, model_id: str) -> OrchestratorState:
    async with ledger.reading() as conn:
        workers = (await conn.execute(
            select(OrchestratorWorker.record, OrchestratorWorker.signed_at)
            .where(OrchestratorWorker.model_id == model_id).order_by(OrchestratorWorker.address)
        )).all()
        groups = (await conn.execute(
            select(OrchestratorGroups.groups).where(OrchestratorGroups.model_id == model_id))).scalar_one_or_none()
    return OrchestratorState(tuple(SavedWorker(dict(r), float(t)) for r, t in workers), tuple(groups or ()))


@dataclass(frozen=True)
class DispatchState:
    """What a dispatch left: `finished`, the progress of the task list named by `tasks_digest` (empty when
    none was saved), and `seeds_reserved`, the seed counter no later orchestrator may issue at or below."""

    tasks_digest: str = ""
    finished: dict[str, Any] | None = None
    seeds_reserved: int = 0


async def load_dispatch_progress(ledger, model_id: str) -> DispatchState:
    async with ledger.reading() as conn:
        row = (await conn.execute(
            select(OrchestratorDispatch.tasks_digest, OrchestratorDispatch.finished, OrchestratorDispatch.seeds_reserved)
            .where(OrchestratorDispatch.model_id == model_id))).one_or_none()
    if row is None:
        return DispatchState()
    return DispatchState(str(row.tasks_digest), dict(row.finished), int(row.seeds_reserved))


async def save_dispatch_progress(ledger, model_id: str, tasks_digest: str, finished: dict[str, Any]) -> None:
    """The finished part of the task list `tasks_digest` (another list's progress is replaced; the seed
    counter is kept whatever the list)."""
    table = OrchestratorDispatch.__table__
    row = {"model_id": model_id, "tasks_digest": tasks_digest, "finished": finished, "seeds_reserved": 0,
           "updated_at": _now()}
    async with ledger.transaction() as tx:
        await tx.conn.execute(insert(tx.dialect, table).values(**row).on_conflict_do_update(
            index_elements=["model_id"],
            set_={"tasks_digest": tasks_digest, "finished": finished, "updated_at": row["updated_at"]}))


async def reserve_seeds(ledger, model_id: str, up_to: int) -> int:
    """Record that seeds up to counter `up_to` may be issued (never lowering what is recorded); the counter
    now reserved."""
    table = OrchestratorDispatch.__table__
    row = {"model_id": model_id, "tasks_digest": "", "finished": {}, "seeds_reserved": up_to, "updated_at": _now()}
    async with ledger.transaction() as tx:
        await tx.conn.execute(insert(tx.dialect, table).values(**row).on_conflict_do_update(
            index_elements=["model_id"], set_={"seeds_reserved": up_to, "updated_at": row["updated_at"]},
            where=table.c.seeds_reserved < up_to))
        return int((await tx.conn.execute(
            select(table.c.seeds_reserved).where(table.c.model_id == model_id))).scalar_one())


async def hold_lease(ledger, model_id: str, holder: str, ttl_s: float, now: float) -> tuple[str, float]:
    """Take or renew the orchestrator lease of `model_id` for `holder` when it is free, expired or already
    `holder`'s; returns who holds it now and until when. One statement decides, so two validators racing
    for it cannot both win. Clocks of the validators sharing a ledger must agree to well within `ttl_s`."""
    row = {"model_id": model_id, "holder": holder, "expires_at": now + ttl_s}
    table = OrchestratorLease.__table__
    async with ledger.transaction() as tx:
        statement = insert(tx.dialect, table).values(**row)
        await tx.conn.execute(statement.on_conflict_do_update(
            index_elements=["model_id"],
            set_={"holder": row["holder"], "expires_at": row["expires_at"]},
            where=(table.c.holder == holder) | (table.c.expires_at < now),
        ))
        current = (await tx.conn.execute(
            select(table.c.holder, table.c.expires_at).where(table.c.model_id == model_id))).one()
    return str(current.holder), float(current.expires_at)


async def give_up_lease(ledger, model_id: str, holder: str) -> None:
    """A validator stopping cleanly lets another take over at once."""
    async with ledger.transaction() as tx:
        await tx.conn.execute(delete(OrchestratorLease).where(
            OrchestratorLease.model_id == model_id, OrchestratorLease.holder == holder))
