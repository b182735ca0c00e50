"""Audit a ledger from its rows alone: `Ledger.verify() -> VerifyReport`, `stagewise ledger verify`.

Recomputes, in one pass over the journal in order:
1. the hash chain: positions 1, 2, ... without gaps, each entry's prev_hash equal to the previous entry's
   hash, each entry's hash equal to keccak256(prev_hash || its fields as stored), the head row equal to the
   last entry;
2. every epoch: its entry range and count, its entries root, and its rewards root and stored leaves: the
   previous chain epoch's cumulative rewards (closed here, or followed from the validator that anchored
   it) plus the rewards journaled since this ledger's previous epoch;
3. the per-worker totals the leaderboard shows, and the worker count kept in the head row.
It stops at the first problem and names the entry (or epoch, or worker) concerned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import epochs as epoch_math
from ledger import journal, queries
from ledger.models import Epoch, EpochReward, JournalEntry, JournalHead, Worker

BATCH = 20_000
_J = JournalEntry.__table__


@dataclass(frozen=True)
class VerifyReport:
    """The result of `verify`: ok, how much was checked, and the first problem found (with its entry)."""

    ok: bool
    entries: int
    epochs: int
    first_bad_seq: int | None = None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "epochs": self.epochs,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
        }


def _describe(e: journal.Entry) -> str:
    parts = [f"entry {e.seq} ({e.kind}"]
    if e.worker:
        parts.append(f", worker {e.worker}")
    if e.job_id:
        parts.append(f", job {e.job_id}")
    if e.stage is not None:
        parts.append(f", stage {e.stage}")
    if e.epoch is not None:
        parts.append(f", epoch {e.epoch}")
    return "".join(parts) + ")"


async def verify(conn: AsyncConnection, progress: Callable[[int], Any] | None = None) -> VerifyReport:
    """Audit the ledger on `conn` (`Ledger.verify()` gives it a reading connection); see the module docstring."""
    epochs = (await conn.execute(select(Epoch.__table__).order_by(Epoch.number))).all()
    head = (await conn.execute(select(JournalHead.seq, JournalHead.entry_hash).where(JournalHead.id == 1))).one()
    prev_hash = journal.GENESIS_HASH
    expected_seq = 1
    cumulative: dict[str, int] = {}  # rewards journaled here so far, by worker
    own_before: dict[str, int] = {}  # the same, as of this ledger's previous epoch
    totals: dict[str, list[int]] = {}  # worker -> [rewards, accepted, work_units, slashes, slashed]
    epoch_index = 0
    epoch_hashes: list[str] = []
    checked = 0

    def fail(seq: int | None, problem: str) -> VerifyReport:
        return VerifyReport(False, checked, epoch_index, seq, problem)

    def check_epoch(number_done: int) -> str | None:
        ep = epochs[number_done]
        if ep.entry_count != len(epoch_hashes) or ep.last_seq - ep.first_seq + 1 != len(epoch_hashes):
            return f"epoch {ep.number}: stores {ep.entry_count} entries over {ep.first_seq}..{ep.last_seq}, found {len(epoch_hashes)}"
        root = epoch_math.entries_root(epoch_hashes)
        if root != ep.entries_root:
            return f"epoch {ep.number}: entries root {ep.entries_root} but its entries give {root}"
        return None

    async def expected_leaves(ep: Any) -> dict[str, int] | str:
        """Epoch `ep`'s cumulative rewards: epoch `ep.number - 1`'s (closed here or followed) plus the rewards
        journaled since this ledger's previous epoch; a problem (str) when the previous is unknown."""
        previous = await queries.epoch_cumulative(conn, ep.number - 1)
        if previous is None:
            return f"epoch {ep.number}: epoch {ep.number - 1} is neither closed nor followed in this ledger"
        expected = dict(previous)
        for worker, amount in cumulative.items():
            expected[worker] = expected.get(worker, 0) + amount - own_before.get(worker, 0)
        return {w: a for w, a in expected.items() if a > 0}

    last_seq = 0
    while True:
        rows = (
            await conn.execute(select(_J).where(_J.c.seq > last_seq).order_by(_J.c.seq).limit(BATCH))
        ).all()
        if not rows:
            break
        for row in rows:
            e = journal.entry_from_row(row)
            if e.seq != expected_seq:
                return fail(expected_seq, f"entry {expected_seq} is missing (next stored entry is {e.seq})")
            if e.prev_hash != prev_hash:
                return fail(
                    e.seq,
                    f"{_describe(e)}: prev_hash {e.prev_hash} does not match entry {e.seq - 1}'s hash {prev_hash}",
                )
            try:
                digest = journal.hash_fields(journal.fields_of(e), e.seq, e.at_ms, e.prev_hash)
            except (TypeError, ValueError) as error:
                return fail(e.seq, f"{_describe(e)}: its fields cannot be encoded: {error}")
            if digest != e.entry_hash:
                return fail(e.seq, f"{_describe(e)}: stored hash {e.entry_hash} but its fields hash to {digest}")
            prev_hash = e.entry_hash
            expected_seq += 1
            checked += 1
            if e.worker is not None:
                t = totals.setdefault(e.worker, [0, 0, 0, 0, 0])
                if e.kind == journal.REWARD:
                    cumulative[e.worker] = cumulative.get(e.worker, 0) + e.amount
                    t[0] += e.amount
                    t[1] += 1
                    t[2] += e.work_units or 0
                elif e.kind == journal.SLASH:
                    t[3] += 1
                    t[4] += e.amount
            if epoch_index < len(epochs) and epochs[epoch_index].first_seq <= e.seq <= epochs[epoch_index].last_seq:
                epoch_hashes.append(e.entry_hash)
                if e.seq == epochs[epoch_index].last_seq:
                    problem = check_epoch(epoch_index)
                    if problem:
                        return fail(epochs[epoch_index].first_seq, problem)
                    ep = epochs[epoch_index]
                    expected = await expected_leaves(ep)
                    if isinstance(expected, str):
                        return fail(ep.first_seq, expected)
                    root = epoch_math.rewards_root(expected)
                    if root != ep.rewards_root:
                        return fail(ep.first_seq, f"epoch {ep.number}: rewards root {ep.rewards_root} but the journal's "
                                                  f"rewards give {root}")
                    leaves = (
                        await conn.execute(
                            select(EpochReward.worker, EpochReward.cumulative).where(EpochReward.epoch == ep.number)
                        )
                    ).all()
                    if {r.worker: r.cumulative for r in leaves} != expected:
                        return fail(ep.first_seq, f"epoch {ep.number}: stored reward leaves differ from the journal's")
                    own_before = dict(cumulative)
                    epoch_index += 1
                    epoch_hashes = []
        last_seq = rows[-1].seq
        if progress:
            progress(len(rows))

    if epoch_index < len(epochs):
        ep = epochs[epoch_index]
        return fail(None, f"epoch {ep.number} covers entries {ep.first_seq}..{ep.last_seq}, past the journal's end")
    if (head.seq, head.entry_hash) != (expected_seq - 1, prev_hash):
        return fail(head.seq, f"journal head says entry {head.seq} / {head.entry_hash}, the journal ends at {expected_seq - 1} / {prev_hash}")

    rows = (await conn.execute(select(Worker.__table__))).all()
    counted = (await conn.execute(select(JournalHead.worker_count).where(JournalHead.id == 1))).scalar_one()
    if counted != len(rows):
        return fail(None, f"journal head counts {counted} workers, the workers table has {len(rows)}")
    for row in rows:
        want = totals.get(row.address, [0, 0, 0, 0, 0])
        have = [row.rewards, row.accepted_jobs, row.work_units, row.slashes, row.slashed_amount]
        if want != have:
            return fail(None, f"worker {row.address}: totals {have} but the journal gives {want}")
    missing = set(totals) - {row.address for row in rows}
    if missing:
        return fail(None, f"worker {sorted(missing)[0]} has journal entries but no totals row")
    return VerifyReport(True, checked, epoch_index)
