"""Leaderboard, slashing history and worker history: order, ranks, pagination, figures."""

import pytest

from ledger import journal
from ledger.store import Ledger
from tests.ledger.helpers import address, h32


@pytest.fixture
async def ledger(db_url):
    led = await Ledger.open(db_url)
    yield led
    await led.close()


async def test_leaderboard_ranks_pages_and_single_worker_rank(ledger):
    # Worker i earns i * 10**18 over i jobs; worker 0 only staked.
    entries = []
    for i in range(1, 8):
        for j in range(i):
            entries.append(journal.reward(address(i), 10**18, job_id=h32(100 * i + j), stage=0, work_units=5))
    await ledger.append(entries)
    await ledger.set_stake(address(0), 10**19)
    await ledger.set_stake(address(7), 3 * 10**18)

    first = await ledger.leaderboard(offset=0, limit=3)
    assert first.total == 8
    assert [(s.rank, s.address, s.accepted_jobs) for s in first.items] == [
        (1, address(7), 7),
        (2, address(6), 6),
        (3, address(5), 5),
    ]
    assert first.items[0].stake == 3 * 10**18 and first.items[0].work_units == 35
    last = await ledger.leaderboard(offset=6, limit=3)
    assert [(s.rank, s.address, s.rewards) for s in last.items] == [(7, address(1), 10**18), (8, address(0), 0)]
    assert (await ledger.worker(address(5))).rank == 3
    assert (await ledger.worker(address(0))).rank == 8
    assert await ledger.worker(address(42)) is None
    assert first.to_json()["items"][0]["rewards"] == str(7 * 10**18)  # wei as decimal strings in JSON


async def test_rewards_beyond_64_bits_sort_as_numbers(ledger):
    await ledger.append(
        [
            journal.reward(address(1), 2**70, job_id=h32(1), stage=0, work_units=1),
            journal.reward(address(2), 9 * 2**60, job_id=h32(2), stage=0, work_units=1),
            journal.reward(address(3), 2**255, job_id=h32(3), stage=0, work_units=1),
        ]
    )
    board = await ledger.leaderboard()
    assert [s.rewards for s in board.items] == [2**255, 2**70, 9 * 2**60]


async def test_slashing_history_newest_first_with_evidence(ledger):
    for k in range(5):
        job = h32(k + 1)
        await ledger.record_bundle(job, "{}", [])
        async with ledger.transaction() as tx:
            await tx.record_verdict(job, "blamed", blamed_stage=1, reason=f"stage 1 proof chunk {k} failed")
            await tx.append(
                [
                    journal.reward(address(1), 10, job_id=job, stage=0, work_units=4),
                    journal.slash(
                        address(2 + k % 2), 10**17, evidence_hash=h32(900 + k), job_id=job, stage=1,
                        data={"chunk": k, "exp_mismatches": 40 + k},
                    ),
                ]
            )
    page = await ledger.slashes(limit=2)
    assert page.total == 5
    assert [s.evidence["chunk"] for s in page.items] == [4, 3]
    assert page.items[0].reason == "stage 1 proof chunk 4 failed" and page.items[0].stage == 1
    mine = await ledger.slashes(worker=address(2).lower())
    assert [s.evidence["chunk"] for s in mine.items] == [4, 2, 0] and mine.total == 3
    standing = await ledger.worker(address(2))
    assert (standing.slashes, standing.slashed_amount) == (3, 3 * 10**17)


async def test_worker_history_pages_newest_first_and_filters_kinds(ledger):
    w = address(5)
    await ledger.append([journal.stake(w, 10**18, ref="0x01:0")])
    await ledger.append([journal.reward(w, i, job_id=h32(i), stage=2, work_units=1) for i in range(1, 6)])
    await ledger.append([journal.slash(w, 1, evidence_hash=h32(77))])
    page = await ledger.worker_history(w, offset=1, limit=3)
    assert page.total == 7 and [e.seq for e in page.items] == [6, 5, 4]
    only = await ledger.worker_history(w, kinds=["stake", "slash"])
    assert [e.kind for e in only.items] == ["slash", "stake"]
    with pytest.raises(ValueError):
        await ledger.worker_history(w, offset=-1)


async def test_slash_times_and_verdict_outcomes_of_many_workers_and_jobs_in_one_call(ledger):
    """What the orchestrator's batched ban and verdict lookups read (node/orchestration/batched_calls.py)."""
    for k in range(3):
        job = h32(k + 1)
        await ledger.record_bundle(job, "{}", [])
        async with ledger.transaction() as tx:
            await tx.record_verdict(job, "blamed" if k < 2 else "accepted", blamed_stage=1 if k < 2 else None)
            if k < 2:
                await tx.append([journal.slash(address(2), 10**17, evidence_hash=h32(900 + k), job_id=job, stage=1)])
    times = await ledger.slash_times_ms([address(2).lower(), address(3)], 1)
    assert list(times) == [address(2)] and len(times[address(2)]) == 1  # the newest only, asked for one
    assert len((await ledger.slash_times_ms([address(2)], 16))[address(2)]) == 2
    outcomes = await ledger.verdict_outcomes([h32(1), h32(3), h32(77)])
    assert outcomes == {h32(1): "blamed", h32(3): "accepted"}
