"""The ledger store on SQLite and PostgreSQL: ingestion, verdicts with their journal entries, totals."""

import pytest

from ledger import journal
from ledger.db import LedgerError
from ledger.queries import StageRecord
from ledger.store import Ledger
from tests.ledger.helpers import address, h32

A, B, C = address(1), address(2), address(3)


def stages(job: int) -> list[StageRecord]:
    return [
        StageRecord(0, A, 0, 4, 10, 40, "0x" + "11" * 65),
        StageRecord(1, B, 4, 8, 10, 40, "0x" + "22" * 65),
    ]


@pytest.fixture
async def ledger(db_url):
    led = await Ledger.open(db_url)
    yield led
    await led.close()


async def test_same_job_ingested_twice_is_one_record(ledger):
    assert await ledger.record_bundle(h32(1), '{"job": 1}', stages(1), model_id=h32(9)) is True
    assert await ledger.record_bundle(h32(1), '{"job": 1, "resubmitted": true}', stages(1)) is False
    job = await ledger.job(h32(1))
    assert job.status == "pending" and job.bundle == '{"job": 1}' and job.stage_count == 2
    assert [r.worker for r in await ledger.receipts(h32(1))] == [A, B]


async def test_verdict_rewards_and_outbox_commit_together(ledger):
    await ledger.record_bundle(h32(1), "{}", stages(1))
    async with ledger.transaction() as tx:
        assert await tx.record_verdict(h32(1), "accepted", figures={"stage0": {"exp_mismatch": 0}})
        written = await tx.append(
            [
                journal.reward(A, 3 * 10**20, job_id=h32(1), stage=0, work_units=40),
                journal.reward(B, 2**200, job_id=h32(1), stage=1, work_units=40),
            ]
        )
        await tx.set_job_status(h32(1), "done")
    assert [e.seq for e in written] == [1, 2]
    assert written[1].prev_hash == written[0].entry_hash
    board = await ledger.leaderboard()
    assert [(s.rank, s.address, s.rewards) for s in board.items] == [(1, B, 2**200), (2, A, 3 * 10**20)]
    assert (await ledger.verdict(h32(1))).figures == {"stage0": {"exp_mismatch": 0}}
    assert (await ledger.job(h32(1))).status == "done"


async def test_a_failed_transaction_writes_nothing(ledger):
    await ledger.record_bundle(h32(1), "{}", stages(1))
    with pytest.raises(RuntimeError):
        async with ledger.transaction() as tx:
            await tx.record_verdict(h32(1), "accepted")
            await tx.append([journal.reward(A, 5, job_id=h32(1), stage=0, work_units=1)])
            raise RuntimeError("validator crashed mid-way")
    assert await ledger.verdict(h32(1)) is None
    assert await ledger.head() == (0, journal.GENESIS_HASH)
    assert (await ledger.leaderboard()).total == 0


async def test_reward_for_a_job_stage_is_written_once(ledger):
    first = await ledger.append([journal.reward(A, 5, job_id=h32(1), stage=0, work_units=1)])
    again = await ledger.append(
        [
            journal.reward(A, 5, job_id=h32(1), stage=0, work_units=1),
            journal.reward(A, 7, job_id=h32(1), stage=1, work_units=1),
            journal.reward(A, 7, job_id=h32(1), stage=1, work_units=1),  # repeated in the same batch
        ]
    )
    assert len(first) == 1 and [(e.stage, e.seq) for e in again] == [(1, 2)]
    standing = await ledger.worker(A)
    assert (standing.rewards, standing.accepted_jobs, standing.work_units) == (12, 2, 2)


async def test_slash_once_per_evidence_and_chain_events_once_per_ref(ledger):
    slash = journal.slash(C, 10**18, evidence_hash=h32(7), job_id=h32(1), stage=1, data={"exp_mismatches": 90})
    assert len(await ledger.append([slash])) == 1
    assert await ledger.append([slash]) == []
    stake = journal.stake(C, 5 * 10**18, ref="0xabc:3")
    assert len(await ledger.append([stake])) == 1
    assert await ledger.append([stake]) == []
    standing = await ledger.worker(C)
    assert (standing.slashes, standing.slashed_amount) == (1, 10**18)


async def test_database_refuses_a_second_reward_even_behind_the_store(ledger):
    """I6 holds in the schema itself: a raw INSERT of a duplicate reward fails."""
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from ledger.models import JournalEntry

    [entry] = await ledger.append([journal.reward(A, 5, job_id=h32(1), stage=0, work_units=1)])
    row = {**entry.to_json(), "seq": 99, "amount": 5}
    with pytest.raises(IntegrityError):
        async with ledger.transaction() as tx:
            await tx.conn.execute(insert(JournalEntry), [row])


async def test_bad_input_is_refused_with_a_clear_error(ledger):
    with pytest.raises(journal.EntryError, match="not an Ethereum address"):
        journal.reward("0x1234", 5, job_id=h32(1), stage=0, work_units=1)
    with pytest.raises(journal.EntryError, match="checksum"):
        journal.stake("0x" + address(0xABCDEF12345)[2:].swapcase(), 5)  # mixed case, not the EIP-55 spelling
    assert journal.stake(address(0xABCDEF12345).lower(), 5).worker == address(0xABCDEF12345)
    with pytest.raises(journal.EntryError, match="amount"):
        journal.reward(A, -1, job_id=h32(1), stage=0, work_units=1)
    with pytest.raises(journal.EntryError, match="needs job_id"):
        journal.NewEntry("reward", 1, worker=A, stage=0)
    with pytest.raises(LedgerError, match="blamed stage"):
        await ledger.record_verdict(h32(1), "blamed")
    with pytest.raises(LedgerError, match="record its bundle before its verdict"):
        await ledger.record_verdict(h32(404), "accepted")
    with pytest.raises(LedgerError, match="unknown job"):
        await ledger.set_job_status(h32(404), "done")
    assert await ledger.head() == (0, journal.GENESIS_HASH)


async def test_stake_as_seen_on_chain(ledger):
    await ledger.set_stake(A, 10**18, block=3)
    await ledger.set_stake(A, 2 * 10**18, block=9)
    standing = await ledger.worker(A)
    assert (standing.stake, standing.stake_block, standing.rewards) == (2 * 10**18, 9, 0)


async def test_outbox_and_cursor(ledger):
    assert await ledger.enqueue("slash", h32(7), {"worker": A}) is not None
    assert await ledger.enqueue("slash", h32(7), {"worker": A}) is None
    [row] = await ledger.take_outbox()
    assert (row.kind, row.status, row.attempts) == ("slash", "sending", 1)
    assert await ledger.take_outbox() == []  # claimed, not stale yet
    await ledger.mark_failed(row.id, "nonce too low")
    [row] = await ledger.take_outbox()
    assert row.attempts == 2 and row.last_error == "nonce too low"
    await ledger.mark_sent(row.id, h32(55))
    assert [(r.status, r.tx_hash) for r in await ledger.outbox()] == [("sent", h32(55))]
    assert await ledger.get_cursor("staking") is None
    await ledger.set_cursor("staking", 12)
    await ledger.set_cursor("staking", 15)
    assert await ledger.get_cursor("staking") == 15


async def test_opening_an_unmigrated_database_without_migrating_says_what_to_do(db_url):
    with pytest.raises(LedgerError, match="stagewise ledger migrate"):
        await Ledger.open(db_url, migrate=False)
