"""Several writers at once, each on its own connection pool (as several validator processes would be).

On PostgreSQL these really race: the head lock serialises the journal, the UNIQUE indexes stop a second
reward, and the loser sees "already done" rather than an error. SQLite serialises writers with BEGIN
IMMEDIATE; the same assertions hold.
"""

import asyncio

from ledger import journal
from ledger.store import Ledger
from tests.ledger.helpers import address, h32

WRITERS = 6


async def _open_many(url: str, n: int) -> list[Ledger]:
    first = await Ledger.open(url)  # migrate once, then open the rest without migrating
    return [first] + [await Ledger.open(url, migrate=False) for _ in range(n - 1)]


async def test_racing_validators_pay_a_job_exactly_once(db_url):
    ledgers = await _open_many(db_url, WRITERS)
    job = h32(1)
    await ledgers[0].record_bundle(job, "{}", [])
    barrier = asyncio.Barrier(WRITERS)

    async def validate(ledger: Ledger, me: int) -> int:
        await barrier.wait()
        async with ledger.transaction() as tx:
            fresh = await tx.record_verdict(job, "accepted", validator=address(100 + me))
            written = await tx.append(
                [journal.reward(address(s + 1), 1000 + me, job_id=job, stage=s, work_units=10) for s in range(3)]
            )
            await tx.enqueue("reward-note", job, {"by": me})
            return len(written) if fresh else -len(written)

    try:
        results = await asyncio.gather(*(validate(led, i) for i, led in enumerate(ledgers)))
        assert sorted(results) == [0] * (WRITERS - 1) + [3]  # one winner wrote 3 rewards; no error leaked
        assert (await ledgers[0].head())[0] == 3
        board = await ledgers[0].leaderboard()
        assert [s.accepted_jobs for s in board.items] == [1, 1, 1]
        assert len(await ledgers[0].outbox()) == 1
        assert (await ledgers[0].verify()).ok
    finally:
        for led in ledgers:
            await led.close()


async def test_racing_duplicate_rewards_without_verdicts_are_idempotent(db_url):
    """The same (job, stage) rewards pushed by every writer, several times over: one of each survives."""
    ledgers = await _open_many(db_url, WRITERS)
    barrier = asyncio.Barrier(WRITERS)

    async def push(ledger: Ledger) -> int:
        await barrier.wait()
        total = 0
        for round_ in range(3):
            batch = [journal.reward(address(1), 5, job_id=h32(j), stage=0, work_units=1) for j in range(10)]
            total += len(await ledger.append(batch))
        return total

    try:
        results = await asyncio.gather(*(push(led) for led in ledgers))
        assert sum(results) == 10
        standing = await ledgers[0].worker(address(1))
        assert (standing.rewards, standing.accepted_jobs) == (50, 10)
        assert (await ledgers[0].verify()).ok
    finally:
        for led in ledgers:
            await led.close()


async def test_concurrent_distinct_appends_keep_one_linear_chain(db_url):
    ledgers = await _open_many(db_url, WRITERS)
    barrier = asyncio.Barrier(WRITERS)

    async def push(ledger: Ledger, me: int) -> None:
        await barrier.wait()
        for k in range(5):
            await ledger.append(
                [journal.reward(address(me + 1), 7, job_id=h32(1000 * me + k), stage=s, work_units=2) for s in range(2)]
            )

    try:
        await asyncio.gather(*(push(led, i) for i, led in enumerate(ledgers)))
        entries = await ledgers[0].entries(limit=1000)
        assert [e.seq for e in entries] == list(range(1, WRITERS * 10 + 1))
        assert all(b.prev_hash == a.entry_hash for a, b in zip(entries, entries[1:]))
        report = await ledgers[0].verify()
        assert report.ok and report.entries == WRITERS * 10
    finally:
        for led in ledgers:
            await led.close()


async def test_nodes_opening_a_fresh_database_together_migrate_once(db_url):
    ledgers = await asyncio.gather(*(Ledger.open(db_url) for _ in range(3)))
    try:
        assert [await led.head() for led in ledgers] == [(0, journal.GENESIS_HASH)] * 3
    finally:
        for led in ledgers:
            await led.close()
