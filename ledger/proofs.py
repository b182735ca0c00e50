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
from ledger.models import Epoch, EpochReward, JournalEntry

REWARD_TREES_KEPT = 8  # epochs whose rewards tree is kept for claim proofs (workers claim against the latest)
_J = JournalEntry.__table__


class RewardProofs:
    """Reward proofs of one ledger, keeping the rewards trees of its latest epochs."""

    def __init__(self) -> None:
        self._trees: dict[int, epoch_math.RewardTree] = {}  # by epoch number, oldest first

    async def reward_proof(
        self, conn: AsyncConnection, worker: str, epoch: int | None = None
    ) -> epoch_math.RewardProof | None:
        """The claim proof of `worker`'s cumulative reward in `epoch` (default: the latest); None if the
        epoch does not exist or the worker had earned nothing by then."""
        record = await queries.epoch(conn, epoch)
        if record is None:
            return None
        tree = self._trees.get(record.number)
        if tree is None:
            t = EpochReward.__table__
            rows = (await conn.execute(select(t.c.worker, t.c.cumulative).where(t.c.epoch == record.number))).all()
            tree = epoch_math.RewardTree.build(record.number, {r.worker: r.cumulative for r in rows})
            self._trees[record.number] = tree  # a closed epoch's rewards never change
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
