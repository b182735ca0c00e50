"""Close epochs on a schedule: every `epoch_seconds`, or sooner once `epoch_entries` entries wait.

Closing an epoch and owing its anchor happen in one ledger transaction (ValidatorNode.close_epoch); the
outbox sends the anchor. Several validators on one ledger may all run this loop: closing takes the
journal head's lock, so they close one epoch after another, never the same one twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import func, select

from ledger.models import Epoch, JournalEntry

log = logging.getLogger(__name__)


async def entries_waiting(node: Any) -> int:
    """Journal entries not yet in a closed epoch, not counting anchor entries: an epoch holding nothing but
    the previous epoch's anchor is not worth a transaction of its own (it rides with the next one)."""
    async with node.ledger.reading() as conn:
        last = (await conn.execute(select(func.max(Epoch.last_seq)))).scalar_one_or_none() or 0
        return int(
            (await conn.execute(select(func.count()).select_from(JournalEntry).where(JournalEntry.seq > last, JournalEntry.kind != "anchor"))).scalar_one()
        )


async def run_epochs(node: Any, *, poll_seconds: float = 0.5) -> None:
    config = node.config
    last_close = time.monotonic()
    while True:
        await asyncio.sleep(min(poll_seconds, config.epoch_seconds))
        try:
            waiting = await entries_waiting(node)
            due = time.monotonic() - last_close >= config.epoch_seconds
            if waiting == 0 or (not due and waiting < config.epoch_entries):
                continue
            await node.close_epoch()
            last_close = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("closing an epoch failed; will retry")
