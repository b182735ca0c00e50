"""Following the contract into the ledger: every stake, unstake and slash journaled once, whatever restarts."""

from __future__ import annotations

from eth_hash.auto import keccak

from ledger import journal
from ledger.chain.client import ChainClient
from ledger.chain.sync import ChainSync, cursor_name
from ledger.store import Ledger
from tests.chain.conftest import UNBONDING_DELAY


async def test_events_become_journal_entries_once_across_restarts(db_url):
    chain = ChainClient.embedded(unbonding_delay=UNBONDING_DELAY)
    validator, alice, bob = chain.dev_keys[0], chain.dev_keys[2], chain.dev_keys[3]
    chain.stake(alice, 1_000)
    chain.stake(bob, 500)
    chain.request_unstake(alice, 300)
    blamed = keccak(b"job 1 stage 0")
    chain.signed_slash(validator, [validator], bob.address, 200, blamed)
    unknown = keccak(b"slashed by someone else")
    chain.signed_slash(validator, [validator], alice.address, 50, unknown)

    ledger = await Ledger.open(db_url)
    try:
        # The validator journaled its own slash when it blamed the stage, before the event came back.
        await ledger.append([journal.slash(bob.address, 200, evidence_hash=blamed, data={"why": "proof failed"})])
        sync = ChainSync(chain, ledger)
        passes = await sync.sync_to_head()
        assert passes[-1].to_block == chain.block_number
        assert sum(p.events for p in passes) >= 5

        kinds = [(e.kind, e.worker, e.amount) for e in await ledger.entries()]
        assert kinds == [
            ("slash", bob.address, 200),  # the validator's, not duplicated by the Slashed event
            ("stake", alice.address, 1_000),
            ("stake", bob.address, 500),
            ("unstake", alice.address, 300),
            ("slash", alice.address, 50),
        ]
        assert (await ledger.worker(alice.address)).stake == 1_000 - 300 - 50
        assert (await ledger.worker(bob.address)).stake == 300
        assert await sync.sync_once() is None  # nothing new

        # A restart that lost its cursor (or a second validator on the same database) re-reads everything.
        await ledger.set_cursor(cursor_name(chain), 0)
        chain.stake(bob, 1)
        again = await ChainSync(chain, ledger).sync_to_head()
        assert sum(p.written for p in again) == 1
        assert [e.kind for e in await ledger.entries()].count("stake") == 3
        report = await ledger.verify()
        assert report.ok, report
    finally:
        await ledger.close()


async def test_an_anchor_on_chain_marks_the_ledger_epoch(sqlite_url):
    chain = ChainClient.embedded(unbonding_delay=UNBONDING_DELAY)
    validator, worker = chain.dev_keys[0], chain.dev_keys[2]
    ledger = await Ledger.open(sqlite_url)
    try:
        await ledger.append([journal.reward(worker.address, 70, job_id=keccak(b"job"), stage=0, work_units=12)])
        await ledger.close_epoch()
        # Epoch 1 anchored with roots this ledger did not close (another ledger's): logged, not marked.
        chain.signed_anchor(validator, [validator], 1, keccak(b"not ours"), keccak(b"x"), 1)
        await ledger.append([journal.reward(worker.address, 30, job_id=keccak(b"job 2"), stage=0, work_units=5)])
        epoch = await ledger.close_epoch()
        # The anchor was sent, then the validator died before recording it: the follower completes it.
        sent = chain.signed_anchor(validator, [validator], epoch.number, epoch.entries_root, epoch.rewards_root, epoch.entry_count)
        (done,) = await ChainSync(chain, ledger).sync_to_head()
        assert done.anchors_marked == 1
        assert (await ledger.epoch(1)).anchor_tx is None
        record = await ledger.epoch(epoch.number)
        assert record.anchor_tx == sent.tx_hash
        assert [e.kind for e in await ledger.entries()] == ["reward", "reward", "anchor"]

        proof = await ledger.reward_proof(worker.address)
        chain.fund_rewards(validator, 100)
        claimed = chain.claim(worker, proof.cumulative, [bytes.fromhex(p[2:]) for p in proof.proof])
        assert claimed.events[0].amount == 100
    finally:
        await ledger.close()
