"""What the ledger owes the chain, and how far it has read the chain: the outbox and the cursors.

- `enqueue(conn, kind, key, payload) -> int | None` (as `LedgerTx.enqueue`, under the journal head's lock, so
  a slash is owed in the transaction that journals it): a chain transaction owed; None when (kind, key) is
  already queued or sent.
- `take(conn, limit, kinds=None, stale_after_s=300)`: claims rows to send (SKIP LOCKED on PostgreSQL);
  `mark_sent(conn, id, tx_hash)`, `mark_failed(conn, id, error, retry=True)`, `rows(conn, status=None)`;
  `supersede(conn, kind, keys, reason)` fails for good what is no longer owed (an epoch another validator took);
  `set_payload(conn, id, payload)` keeps what a sender gathered for a row (a signed order and its validators'
  signatures, PROTOCOL I7) so that a sender that dies loses none of it.
  `Ledger` offers them as `take_outbox`, `mark_sent`, `mark_failed`, `set_outbox_payload` and `outbox`, each in
  a transaction.
- `set_cursor(conn, name, block)`, `get_cursor(conn, name) -> int | None`: the last chain block whose events
  a follower (`ledger.chain.sync`) has journaled.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger.db import insert
from ledger.journal import hash32
from ledger.models import OUTBOX_FAILED, OUTBOX_PENDING, OUTBOX_SENDING, OUTBOX_SENT, ChainCursor, ChainOutbox

_O = ChainOutbox.__table__


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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


async def enqueue(conn: AsyncConnection, kind: str, key: str, payload: dict[str, Any]) -> int | None:
    """Owe the chain a transaction; None when (kind, key) is already queued (or sent)."""
    now = _now()
    stmt = (
        insert(conn.dialect.name, _O)
        .values(kind=kind, key=key, payload=payload, status=OUTBOX_PENDING, attempts=0, created_at=now, updated_at=now)
        .on_conflict_do_nothing()
        .returning(ChainOutbox.id)
    )
    return (await conn.execute(stmt)).scalar_one_or_none()


async def take(
    conn: AsyncConnection, limit: int = 10, *, kinds: Sequence[str] | None = None, stale_after_s: float = 300.0
) -> list[OutboxRow]:
    """Claim up to `limit` rows to send: pending ones, and 'sending' ones left by a sender that died
    more than `stale_after_s` ago. Claimed rows become 'sending' with one more attempt."""
    now = _now()
    stale = now - dt.timedelta(seconds=stale_after_s)
    query = (
        select(_O)
        .where(or_(_O.c.status == OUTBOX_PENDING, and_(_O.c.status == OUTBOX_SENDING, _O.c.updated_at < stale)))
        .order_by(_O.c.id)
        .limit(limit)
    )
    if kinds:
        query = query.where(_O.c.kind.in_(list(kinds)))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = (await conn.execute(query)).all()
    if not rows:
        return []
    await conn.execute(
        update(_O)
        .where(_O.c.id.in_([r.id for r in rows]))
        .values(status=OUTBOX_SENDING, attempts=_O.c.attempts + 1, updated_at=now)
    )
    return [
        OutboxRow(r.id, r.kind, r.key, r.payload, OUTBOX_SENDING, r.attempts + 1, r.last_error, r.tx_hash)
        for r in rows
    ]


async def mark_sent(conn: AsyncConnection, outbox_id: int, tx_hash: str) -> None:
    await conn.execute(
        update(_O)
        .where(_O.c.id == outbox_id)
        .values(status=OUTBOX_SENT, tx_hash=hash32(tx_hash, "tx_hash"), last_error=None, updated_at=_now())
    )


async def mark_failed(conn: AsyncConnection, outbox_id: int, error: str, *, retry: bool = True) -> None:
    await conn.execute(
        update(_O)
        .where(_O.c.id == outbox_id)
        .values(status=OUTBOX_PENDING if retry else OUTBOX_FAILED, last_error=error, updated_at=_now())
    )


async def supersede(conn: AsyncConnection, kind: str, keys: Sequence[str], reason: str) -> None:
    """Rows of `kind` with these keys that were not sent are no longer owed: failed for good, with `reason`."""
    await conn.execute(
        update(_O)
        .where(_O.c.kind == kind, _O.c.key.in_(list(keys)), _O.c.status != OUTBOX_SENT)
        .values(status=OUTBOX_FAILED, last_error=reason, updated_at=_now())
    )


async def set_payload(conn: AsyncConnection, outbox_id: int, payload: dict[str, Any]) -> None:
    await conn.execute(update(_O).where(_O.c.id == outbox_id).values(payload=payload, updated_at=_now()))


async def rows(conn: AsyncConnection, status: str | None = None) -> list[OutboxRow]:
    """The outbox in order, all of it or the rows in one status."""
    query = select(_O).order_by(_O.c.id)
    if status:
        query = query.where(_O.c.status == status)
    found = (await conn.execute(query)).all()
    return [OutboxRow(r.id, r.kind, r.key, r.payload, r.status, r.attempts, r.last_error, r.tx_hash) for r in found]


async def set_cursor(conn: AsyncConnection, name: str, block: int) -> None:
    now = _now()
    stmt = insert(conn.dialect.name, ChainCursor.__table__).values(name=name, block=block, updated_at=now)
    stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={"block": block, "updated_at": now})
    await conn.execute(stmt)


async def get_cursor(conn: AsyncConnection, name: str) -> int | None:
    return (await conn.execute(select(ChainCursor.block).where(ChainCursor.name == name))).scalar_one_or_none()
