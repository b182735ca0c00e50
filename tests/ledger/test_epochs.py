"""Closing epochs on a real database: ranges, roots, cumulative rewards, proofs, anchoring, audit."""

import pytest
from sqlalchemy import text

from ledger import epochs, journal
from ledger.store import Ledger
from tests.ledger.helpers import address, h32

A, B, C = address(1), address(2), address(3)


@pytest.fixture
async def ledger(db_url):
    led = await Ledger.open(db_url)
    yield led
    await led.close()


def rewards(job: int, *pairs: tuple[str, int]) -> list[journal.NewEntry]:
    return [journal.reward(w, amt, job_id=h32(job), stage=s, work_units=10) for s, (w, amt) in enumerate(pairs)]


async def test_epochs_cover_consecutive_ranges_with_cumulative_rewards(ledger):
    assert await ledger.close_epoch() is None  # nothing to close yet
    await ledger.append(rewards(1, (A, 100), (B, 50)))
    await ledger.append([journal.slash(B, 10**18, evidence_hash=h32(500), job_id=h32(2), stage=0)])
    first = await ledger.close_epoch()
    assert (first.number, first.first_seq, first.last_seq, first.entry_count) == (1, 1, 3, 3)
    assert first.total_rewards == 150
    assert await ledger.close_epoch() is None

    await ledger.append(rewards(3, (A, 1), (C, 7)))
    second = await ledger.close_epoch()
    assert (second.number, second.first_seq, second.last_seq) == (2, 4, 5)
    # Cumulative, not per epoch: A has 101 in total; B keeps its 50 despite the slash (that came from stake).
    assert second.rewards_root == epochs.rewards_root({A: 101, B: 50, C: 7})
    entry_hashes = [e.entry_hash for e in await ledger.entries(after_seq=3)]
    assert second.entries_root == epochs.entries_root(entry_hashes)

    proof = await ledger.reward_proof(A)
    assert (proof.epoch, proof.cumulative) == (2, 101) and proof.verify()
    old = await ledger.reward_proof(A, epoch=1)
    assert (old.cumulative, old.rewards_root) == (100, first.rewards_root) and old.verify()
    assert await ledger.reward_proof(C, epoch=1) is None
    assert await ledger.reward_proof(A, epoch=9) is None

    for seq in range(1, 6):
        entry = await ledger.entry_proof(seq)
        assert entry.verify() and entry.epoch == (1 if seq <= 3 else 2)
    await ledger.append(rewards(4, (A, 1)))
    assert await ledger.entry_proof(6) is None  # not in a closed epoch yet

    page = await ledger.epochs()
    assert [e.number for e in page.items] == [2, 1] and page.total == 2
    assert (await ledger.verify()).ok


async def test_anchoring_journals_one_anchor_entry(ledger):
    await ledger.append(rewards(1, (A, 100)))
    closed = await ledger.close_epoch()
    anchor = await ledger.mark_anchored(1, h32(0xA1))
    assert anchor.kind == "anchor" and anchor.epoch == 1 and anchor.data["rewards_root"] == closed.rewards_root
    assert await ledger.mark_anchored(1, h32(0xA1)) is None  # the chain follower sees it again: no-op
    epoch = await ledger.epoch(1)
    assert epoch.anchor_tx == h32(0xA1) and epoch.anchored_at is not None
    # The anchor entry opens the next epoch.
    assert (await ledger.close_epoch()).first_seq == anchor.seq


async def test_verify_catches_stored_leaves_that_disagree_with_the_journal(ledger):
    await ledger.append(rewards(1, (A, 100), (B, 5)))
    await ledger.close_epoch()
    async with ledger.transaction() as tx:
        cumulative = "'" + f"{500:078d}" + "'" if ledger.dialect == "sqlite" else "500"
        await tx.conn.execute(text(f"UPDATE epoch_rewards SET cumulative = {cumulative} WHERE worker = '{B}'"))
    report = await ledger.verify()
    assert not report.ok and "reward leaves" in report.problem


async def test_verify_catches_tampered_totals(ledger):
    await ledger.append(rewards(1, (A, 100)))
    async with ledger.transaction() as tx:
        await tx.conn.execute(text(f"UPDATE workers SET accepted_jobs = 40 WHERE address = '{A}'"))
    report = await ledger.verify()
    assert not report.ok and f"worker {A}" in report.problem


async def test_verify_catches_a_wrong_worker_count(ledger):
    await ledger.append(rewards(1, (A, 100), (B, 1)))
    await ledger.set_stake(C, 10**18)
    assert (await ledger.leaderboard()).total == 3
    async with ledger.transaction() as tx:
        await tx.conn.execute(text("UPDATE journal_head SET worker_count = 2"))
    report = await ledger.verify()
    assert not report.ok and "counts 2 workers" in report.problem
