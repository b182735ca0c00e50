"""The durable queue on its own: oldest first, a claim is a lease, a crashed claim is taken again, a job
that keeps failing stops being claimed."""

import datetime as dt

from sqlalchemy import update

from ledger.models import Job
from node.validator.queue import MAX_ATTEMPTS, JobQueue


def job_id(n: int) -> str:
    return "0x" + f"{n:064x}"


async def enqueue(ledger, *numbers):
    for n in numbers:
        assert await ledger.record_bundle(job_id(n), f'{{"n": {n}}}', [])


async def test_jobs_are_claimed_oldest_first_and_once(ledger):
    await enqueue(ledger, 1, 2)
    a, b = JobQueue(ledger.write_engine, "a", 60), JobQueue(ledger.write_engine, "b", 60)
    first, second = await a.claim(), await b.claim()
    assert (first.job_id, second.job_id) == (job_id(1), job_id(2))
    assert await a.claim() is None and await b.claim() is None  # both held under a live lease
    assert await a.depth() == 2


async def test_a_crashed_claim_is_taken_again_after_its_lease_or_at_once_by_its_owner(ledger):
    await enqueue(ledger, 1)
    crashed = JobQueue(ledger.write_engine, "a", 60)
    assert (await crashed.claim()).attempts == 1
    other = JobQueue(ledger.write_engine, "b", 60)
    assert await other.claim() is None
    assert (await crashed.claim(reclaim_own=True)).attempts == 2  # the same validator id, restarted
    async with ledger.write_engine.begin() as conn:  # the lease runs out
        stale = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=61)
        await conn.execute(update(Job).values(claimed_at=stale))
    taken = await other.claim()
    assert taken.job_id == job_id(1) and taken.attempts == 3
    async with ledger.transaction() as tx:  # the old owner may no longer finish it
        assert not await crashed.finish(tx.conn, job_id(1))
        assert await other.finish(tx.conn, job_id(1))
    assert await other.depth() == 0


async def test_a_job_that_keeps_failing_is_left_for_an_operator(ledger):
    await enqueue(ledger, 1)
    queue = JobQueue(ledger.write_engine, "a", 60)
    for attempt in range(MAX_ATTEMPTS):
        claimed = await queue.claim()
        assert claimed.attempts == attempt + 1
        await queue.release(claimed.job_id, "RuntimeError: the model would not load")
    assert await queue.claim() is None
    record = await ledger.job(job_id(1))
    assert record.status == "pending" and "would not load" in record.last_error
