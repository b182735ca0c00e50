"""Follow the staking contract's events into the ledger's worker stakes (what intake checks, I3).

Each pass reads the events after the stored cursor, re-reads the current active stake of every worker an
event touched (the event order cannot be wrong that way), writes the stakes and the new cursor, and
journals stake and unstake entries keyed by "tx_hash:log_index", so re-reading a block is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ledger import journal

log = logging.getLogger(__name__)

TOUCHING = ("Staked", "UnstakeRequested", "Withdrawn", "Slashed")


def _read(chain: Any, after_block: int) -> tuple[int, list[Any], dict[str, int]]:
    head = chain.block_number
    if head <= after_block:
        return after_block, [], {}
    events = [e for e in chain.events_since(after_block + 1, head) if type(e).__name__ in TOUCHING]
    workers = sorted({e.worker for e in events})
    return head, events, {w: chain.stake_of(w) for w in workers}


async def follow_once(node: Any) -> int:
    """One pass; returns how many events were applied."""
    name = f"stake:{node.chain.address}"
    cursor = await node.ledger.get_cursor(name)
    head, events, stakes = await asyncio.to_thread(_read, node.chain, -1 if cursor is None else cursor)
    if head == cursor or (cursor is None and head < 0):
        return 0
    entries = []
    for e in events:
        ref = f"{e.tx_hash}:{e.log_index}"
        kind = type(e).__name__
        if kind == "Staked":
            entries.append(journal.stake(e.worker, int(e.amount), ref=ref, data={"block": e.block_number}))
        elif kind == "UnstakeRequested":
            entries.append(journal.unstake(e.worker, int(e.amount), ref=ref, data={"block": e.block_number}))
    async with node.ledger.transaction() as tx:
        for worker, stake in stakes.items():
            await tx.set_stake(worker, stake, head)
        if entries:
            await tx.append(entries)
        await tx.set_cursor(name, head)
    if events:
        log.info("followed %d staking events up to block %d", len(events), head)
    return len(events)


async def run_stake_follower(node: Any, *, poll_seconds: float = 1.0) -> None:
    while True:
        try:
            await follow_once(node)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            node.metrics.chain_errors.labels("events").inc()
            log.warning("following stake events failed (%s: %s); will retry", type(error).__name__, error)
        await asyncio.sleep(poll_seconds)
