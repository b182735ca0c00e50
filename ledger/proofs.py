"""Proofs out of a ledger's closed epochs (the pure Merkle work is `ledger.epochs`, the checks `ledger.merkle`).

- `RewardProofs.reward_proof(conn, worker, epoch=None) -> RewardProof | None`: what a worker sends to the
  contract's claim(); the trees of the latest epochs are kept, a closed epoch's rewards never changing.
- `entry_proof(conn, seq) -> EntryProof | None`: that journal entry `seq` is in its epoch.
Both results carry `.verify()`. `Ledger.reward_proof` and `Ledger.entry_proof` call them on a reading
connection.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import epochs as epoch_math
from ledger import queries
from ledger.journal import checksum
from ledger.models import Epoch, JournalEntry

REWARD_TREES_KEPT = 8  # epochs whose rewards tree is kept for claim proofs (workers claim against the latest)
_J = JournalEntry.__table__


class RewardProofs:
    """Reward proofs of one ledger, keeping the rewards trees of its latest epochs."""

    def __init__(self) -> None:
        self._trees: dict[tuple[int, str], epoch_math.RewardTree] = {}  # by epoch and root, oldest first

    async def reward_proof(
        self, conn: AsyncConnection, worker: str, epoch: int | None = None
    ) -> epoch_math.RewardProof | None:
        """The claim proof of `worker`'s cumulative reward in chain epoch `epoch` (default: the latest this
        ledger closed or followed); None if this ledger has no such epoch or the worker had earned nothing by then."""
        number = await queries.latest_known_epoch(conn) if epoch is None else epoch
        root = await queries.rewards_root_of(conn, number) if number > 0 else None
        if root is None:
            return None
        # Keyed by root too: an unanchored epoch another validator's anchor took is given up, and its number
        # then holds the followed epoch's rewards.
        tree = self._trees.get((number, root))
        if tree is None:
            tree = epoch_math.RewardTree.build(number, await queries.epoch_cumulative(conn, number) or {})
            self._trees[(number, root)] = tree
            while len(self._trees) > REWARD_TREES_KEPT:
                self._trees.pop(next(iter(self._trees)))
        return tree.proof(checksum(worker))


async def entry_proof(conn: AsyncConnection, seq: int) -> epoch_math.EntryProof | None:
    """The proof that entry `seq` is in its epoch; None while the entry is in no closed epoch."""
    row = (await conn.execute(select(Epoch).where(Epoch.first_seq <= seq, Epoch.last_seq >= seq))).one_or_none()
    if row is None:
        return None
    hashes = (
        await conn.execute(
            select(_J.c.entry_hash).where(_J.c.seq.between(row.first_seq, row.last_seq)).order_by(_J.c.seq)
        )
    ).scalars().all()
    return epoch_math.entry_proof(row.number, row.first_seq, hashes, seq)
