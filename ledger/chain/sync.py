"""Follow the staking contract's events into the ledger: stake, unstake and slash entries, exactly once.

Each pass reads the events of blocks (cursor, head - confirmations] and, in ONE ledger transaction, journals
them, records the stake the chain now reports for every worker they touched, and moves the cursor. So a
crash leaves either all of a pass or none of it, and re-reading a block (a restart, a second validator on the
same database) writes nothing twice: stake and unstake entries carry `ref` = "tx_hash:log_index", and a slash
is one entry per evidence hash, so the Slashed event of a slash the validator has already journaled (when it
blamed the stage) is skipped.

Anchored events mark the ledger's epoch as anchored when the roots on chain are the ones the ledger closed,
which completes an anchor whose sender crashed between sending and recording it; another validator's epochs
are followed by the node (node/validator/follow.py), which fetches their entries. Withdrawn, Claimed and the
owner's events change no ledger total and are not journaled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from ledger import journal
from ledger.chain.client import ChainClient
from ledger.chain.events import Anchored, ChainEvent, Slashed, Staked, UnstakeRequested, Withdrawn
from ledger.models import Epoch
from ledger.store import Ledger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncPass:
    """What one pass did: blocks [from_block, to_block], events seen, journal entries written."""

    from_block: int
    to_block: int
    events: int
    written: int
    anchors_marked: int = 0


def cursor_name(client: ChainClient) -> str:
    """One cursor per contract, so one database can follow several chains or redeployments."""
    return f"staking:{client.chain_id}:{client.address.lower()}"


def entries_for(events: Sequence[ChainEvent]) -> list[journal.NewEntry]:
    """The journal entries a run of contract events makes (in event order)."""
    entries: list[journal.NewEntry] = []
    for event in events:
        if isinstance(event, Staked):
            entries.append(
                journal.stake(event.worker, event.amount, ref=event.event_id, data={"block": event.block_number})
            )
        elif isinstance(event, UnstakeRequested):
            entries.append(
                journal.unstake(
                    event.worker,
                    event.amount,
                    ref=event.event_id,
                    data={"block": event.block_number, "release_at": event.release_at},
                )
            )
        elif isinstance(event, Slashed):
            entries.append(
                journal.slash(
                    event.worker,
                    event.amount,
                    evidence_hash=event.evidence_hash,
                    data={"block": event.block_number, "tx_hash": event.tx_hash, "validator": event.validator},
                )
            )
    return entries


class ChainSync:
    """Moves a ledger's cursor along the chain. `await sync.run()` follows forever; `sync_once()` one pass."""

    def __init__(
        self,
        client: ChainClient,
        ledger: Ledger,
        *,
        start_block: int = 0,
        confirmations: int = 0,
        max_blocks: int = 5_000,
    ):
        self.client = client
        self.ledger = ledger
        self.start_block = start_block
        self.confirmations = confirmations
        self.max_blocks = max_blocks
        self.name = cursor_name(client)

    async def sync_once(self) -> SyncPass | None:
        """Apply the next blocks (at most `max_blocks`); None when there is nothing new."""
        cursor = await self.ledger.get_cursor(self.name)
        first = self.start_block if cursor is None else cursor + 1
        head = await asyncio.to_thread(lambda: self.client.block_number) - self.confirmations
        if head < first:
            return None
        last = min(head, first + self.max_blocks - 1)
        events = await asyncio.to_thread(self.client.events_since, first, last)
        touched = sorted({e.worker for e in events if isinstance(e, (Staked, UnstakeRequested, Withdrawn, Slashed))})
        stakes = {w: await asyncio.to_thread(self.client.stake_of, w, last) for w in touched}
        anchors = [e for e in events if isinstance(e, Anchored)]
        marked = 0
        async with self.ledger.transaction() as tx:
            written = await tx.append(entries_for(events))
            for worker, stake in stakes.items():
                await tx.set_stake(worker, stake, block=last)
            for anchor in anchors:
                marked += await self._mark_anchored(tx, anchor)
            await tx.set_cursor(self.name, last)
        if events:
            log.info(
                "chain blocks %d..%d: %d events, %d journal entries, %d anchors marked",
                first,
                last,
                len(events),
                len(written),
                marked,
            )
        return SyncPass(first, last, len(events), len(written), marked)

    async def sync_to_head(self) -> list[SyncPass]:
        """Passes until the cursor reaches the head (what a validator does once on start)."""
        passes = []
        while (done := await self.sync_once()) is not None:
            passes.append(done)
        return passes

    async def run(self, interval: float = 2.0, stop: asyncio.Event | None = None) -> None:
        """Follow the chain until `stop` is set; a failing pass is logged and retried after `interval`."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.sync_to_head()
            except Exception:  # noqa: BLE001 - a node hiccup must not end the follower
                log.exception("chain sync pass failed; retrying in %.1f s", interval)
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass

    async def _mark_anchored(self, tx, event: Anchored) -> int:
        row = (await tx.conn.execute(select(Epoch).where(Epoch.number == event.epoch))).one_or_none()
        if row is None:  # another validator's epoch: the node follows it (node/validator/follow.py)
            log.debug("epoch %d anchored on chain by %s is not this ledger's", event.epoch, event.validator)
            return 0
        on_chain = ("0x" + event.entries_root.hex(), "0x" + event.rewards_root.hex())
        if (row.entries_root, row.rewards_root) != on_chain:
            log.info("epoch %d anchored on chain by %s with other roots than this ledger closed it with: the node "
                     "gives its own up and follows that one", event.epoch, event.validator)
            return 0
        return 1 if await tx.mark_anchored(event.epoch, event.tx_hash) is not None else 0
