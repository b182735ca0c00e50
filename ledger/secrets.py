"""Secrets the validators sharing one ledger agree on: made once, by whichever needs one first, and kept.

`shared_secret(ledger, name)` returns the secret stored under `name`, creating 32 random bytes when there is
none. Two validators racing on a fresh ledger both insert-or-ignore and then read: they end with the same one.
"""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import select

from ledger.db import insert
from ledger.models import NodeSecret


async def shared_secret(ledger, name: str, length: int = 32) -> bytes:
    fresh = {"name": name, "value": "0x" + secrets.token_hex(length), "created_at": dt.datetime.now(dt.timezone.utc)}
    async with ledger.transaction() as tx:
        await tx.conn.execute(insert(tx.dialect, NodeSecret.__table__).values(**fresh).on_conflict_do_nothing())
    async with ledger.reading() as conn:
        value = (await conn.execute(select(NodeSecret.value).where(NodeSecret.name == name))).scalar_one()
    return bytes.fromhex(value[2:])
