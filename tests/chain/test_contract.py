"""The staking contract's rules, each run on the in-process EVM and on anvil."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from eth_hash.auto import keccak

from ledger import epochs
from ledger.chain.abi import Artifact
from ledger.chain.client import ChainClient
from ledger.chain.errors import ContractRevert
from ledger.chain.events import Anchored, Claimed, Slashed, Staked, UnstakeRequested, Withdrawn
from node.protocol.signing import SigningKey
from tests.chain.conftest import UNBONDING_DELAY

ETHER = 10**18


def reverts(name: str):
    """Expect a ContractRevert naming the custom error `name`."""
    return pytest.raises(ContractRevert, match=rf"reverted with {name}\(")


def test_stake_unbond_and_withdraw(chain: ChainClient):
    worker = chain.dev_keys[2]
    with reverts("ZeroAmount"):
        chain.stake(worker, 0)
    staked = chain.stake(worker, 3 * ETHER)
    assert staked.events == (Staked(*_where(staked), worker=worker.address, amount=3 * ETHER, total_stake=3 * ETHER),)
    assert chain.stake_of(worker.address) == 3 * ETHER

    with reverts("InsufficientStake"):
        chain.request_unstake(worker, 4 * ETHER)
    with reverts("NothingToWithdraw"):
        chain.withdraw(worker)
    requested = chain.request_unstake(worker, 2 * ETHER)
    (event,) = requested.events
    assert isinstance(event, UnstakeRequested) and event.total_unbonding == 2 * ETHER
    assert event.release_at == chain.timestamp() + UNBONDING_DELAY
    info = chain.stake_info(worker.address)
    assert (info.active, info.unbonding, info.release_at) == (1 * ETHER, 2 * ETHER, event.release_at)

    with reverts("UnbondingNotElapsed") as early:
        chain.withdraw(worker)
    assert early.value.args_["releaseAt"] == event.release_at

    chain.advance_time(UNBONDING_DELAY + 1)
    before = chain.balance_of(worker.address)
    withdrawn = chain.withdraw(worker)
    assert withdrawn.events == (Withdrawn(*_where(withdrawn), worker=worker.address, amount=2 * ETHER),)
    assert chain.balance_of(worker.address) == before + 2 * ETHER - withdrawn.fee
    assert chain.stake_info(worker.address).slashable == 1 * ETHER
    with reverts("NothingToWithdraw"):
        chain.withdraw(worker)


def test_only_the_owner_keeps_the_validator_set(chain: ChainClient):
    owner, stranger, newcomer = chain.dev_keys[0], chain.dev_keys[2], chain.dev_keys[3]
    for call in (
        lambda: chain.add_validator(stranger, stranger.address),
        lambda: chain.remove_validator(stranger, owner.address),
        lambda: chain.set_treasury(stranger, stranger.address),
    ):
        with reverts("NotOwner"):
            call()
    with reverts("ZeroAddress"):
        chain.add_validator(owner, "0x" + "00" * 20)
    with reverts("ValidatorAlreadyAdded"):
        chain.add_validator(owner, owner.address)
    with reverts("ValidatorNotFound"):
        chain.remove_validator(owner, newcomer.address)

    with reverts("NotValidator"):
        chain.signed_anchor(owner, [newcomer], 1, keccak(b"e"), keccak(b"r"), 1)
    chain.add_validator(owner, newcomer.address)
    assert chain.is_validator(newcomer.address)
    chain.signed_anchor(owner, [newcomer], 1, keccak(b"e"), keccak(b"r"), 1)  # threshold 1: its signature suffices
    chain.remove_validator(owner, newcomer.address)
    with reverts("NotValidator"):
        chain.signed_anchor(owner, [newcomer], 2, keccak(b"e"), keccak(b"r"), 1)
    with reverts("NotValidator"):
        chain.signed_slash(newcomer, [newcomer], owner.address, 1, keccak(b"evidence"))

    changed = chain.set_treasury(owner, newcomer.address)
    assert chain.treasury() == newcomer.address and type(changed.events[0]).__name__ == "TreasuryChanged"
    chain.transfer_ownership(owner, newcomer.address)
    assert chain.owner() == newcomer.address
    with reverts("NotOwner"):
        chain.add_validator(owner, stranger.address)
    chain.add_validator(newcomer, stranger.address)


def test_slash_takes_active_then_unbonding_stake_never_more_once_per_evidence(chain: ChainClient):
    validator, treasury, worker = chain.dev_keys[0], chain.dev_keys[1].address, chain.dev_keys[2]
    chain.stake(worker, 100)
    chain.request_unstake(worker, 60)  # active 40, unbonding 60
    evidence = keccak(b"bundle 1, stage 0")
    with reverts("ZeroAmount"):
        chain.signed_slash(validator, [validator], worker.address, 0, evidence)

    treasury_before = chain.balance_of(treasury)
    slashed = chain.signed_slash(validator, [validator], worker.address, 70, evidence)
    assert slashed.events == (
        Slashed(
            *_where(slashed), worker=worker.address, evidence_hash=evidence, validator=validator.address, amount=70
        ),
    )
    info = chain.stake_info(worker.address)
    assert (info.active, info.unbonding) == (0, 30)
    assert chain.balance_of(treasury) == treasury_before + 70
    assert chain.evidence_used(evidence)

    with reverts("EvidenceAlreadyUsed"):
        chain.signed_slash(validator, [validator], worker.address, 1, evidence)
    capped = chain.signed_slash(validator, [validator], worker.address, 31, keccak(b"bundle 2, stage 1"))
    assert capped.events[0].amount == 30  # an order for more than is left takes what is left, never more
    assert chain.stake_info(worker.address).slashable == 0
    with reverts("NothingToSlash"):
        chain.signed_slash(validator, [validator], worker.address, 1, keccak(b"bundle 3, stage 0"))
    assert chain.balance_of(treasury) == treasury_before + 100
    chain.advance_time(UNBONDING_DELAY + 1)
    with reverts("NothingToWithdraw"):
        chain.withdraw(worker)


def test_anchor_epochs_advance_one_at_a_time(chain: ChainClient):
    validator = chain.dev_keys[0]
    assert chain.latest_anchor().count == 0
    first = chain.signed_anchor(validator, [validator], 1, keccak(b"entries 1"), keccak(b"rewards 1"), 10)
    assert first.events == (
        Anchored(
            *_where(first),
            epoch=1,
            entries_root=keccak(b"entries 1"),
            rewards_root=keccak(b"rewards 1"),
            entry_count=10,
            validator=validator.address,
        ),
    )
    for wrong in (0, 1, 3, 7):
        with reverts("EpochNotNext") as refused:
            chain.signed_anchor(validator, [validator], wrong, keccak(b"x"), keccak(b"y"), 1)
        assert refused.value.args_ == {"epoch": wrong, "expected": 2}
    chain.signed_anchor(validator, [validator], 2, keccak(b"entries 2"), keccak(b"rewards 2"), 3)
    latest = chain.latest_anchor()
    assert (latest.count, latest.latest_epoch, latest.rewards_root) == (2, 2, keccak(b"rewards 2"))
    assert chain.entries_root_of(1) == keccak(b"entries 1")
    assert chain.entries_root_of(2) == keccak(b"entries 2")


def test_claim_pays_cumulative_rewards_once_against_the_latest_root(chain: ChainClient):
    validator, funder = chain.dev_keys[0], chain.dev_keys[1]
    alice, bob = chain.dev_keys[2], chain.dev_keys[3]
    with reverts("NoRewardsRoot"):
        chain.claim(alice, 1, [])

    root, proofs = rewards_root({alice.address: 500, bob.address: 300, chain.dev_keys[4].address: 7})
    chain.signed_anchor(validator, [validator], 1, keccak(b"entries 1"), root, 3)
    with reverts("InsufficientRewardPool"):
        chain.claim(alice, 500, proofs[alice.address])
    chain.fund_rewards(funder, 1_000)
    assert chain.reward_pool() == 1_000
    with reverts("InvalidProof"):
        chain.claim(alice, 501, proofs[alice.address])
    with reverts("InvalidProof"):
        chain.claim(bob, 500, proofs[alice.address])  # someone else's leaf

    before = chain.balance_of(alice.address)
    claimed = chain.claim(alice, 500, proofs[alice.address])
    assert claimed.events == (Claimed(*_where(claimed), account=alice.address, amount=500, cumulative_amount=500),)
    assert chain.balance_of(alice.address) == before + 500 - claimed.fee
    with reverts("NothingToClaim"):
        chain.claim(alice, 500, proofs[alice.address])

    # The next epoch's root carries cumulative amounts: only the difference is paid, old roots are dead.
    root2, proofs2 = rewards_root({alice.address: 800, bob.address: 300})
    chain.signed_anchor(validator, [validator], 2, keccak(b"entries 2"), root2, 2)
    with reverts("InvalidProof"):
        chain.claim(bob, 300, proofs[bob.address])
    again = chain.claim(alice, 800, proofs2[alice.address])
    assert again.events[0].amount == 300 and chain.claimed_of(alice.address) == 800
    assert chain.reward_pool() == 200
    with reverts("InsufficientRewardPool") as short:
        chain.claim(bob, 300, proofs2[bob.address])
    assert short.value.args_ == {"payout": 300, "pool": 200}


def test_every_leaf_of_an_odd_sized_ledger_tree_can_claim(chain: ChainClient):
    """Five leaves: the ledger promotes unpaired nodes unchanged, and claim() folds those proofs the same way."""
    validator, workers = chain.dev_keys[0], chain.dev_keys[1:6]
    cumulative = {w.address: 100 * (i + 1) for i, w in enumerate(workers)}
    root, proofs = rewards_root(cumulative)
    assert sorted(len(p) for p in proofs.values()) == [1, 3, 3, 3, 3]  # the fifth leaf is promoted twice
    chain.signed_anchor(validator, [validator], 1, keccak(b"entries"), root, len(workers))
    chain.fund_rewards(validator, sum(cumulative.values()))
    for worker in workers:
        chain.claim(worker, cumulative[worker.address], proofs[worker.address])
    assert chain.reward_pool() == 0


def test_reentrant_withdraw_and_claim_are_refused_by_the_lock(chain: ChainClient):
    owner, worker = chain.dev_keys[0], chain.dev_keys[2]
    artifact = Artifact.load("test/ReentrantAttacker")
    attacker_address = chain.deploy_artifact(worker, artifact, chain.address).contract_address
    attacker = chain.contract_at(artifact, attacker_address)

    chain.transact(worker, attacker.functions.stake(), value=1_000)
    chain.transact(worker, attacker.functions.requestUnstake(1_000))
    chain.stake(chain.dev_keys[3], 5_000)  # other people's money the attacker would like to take
    chain.advance_time(UNBONDING_DELAY + 1)
    chain.transact(worker, attacker.functions.attackWithdraw())
    assert chain.balance_of(attacker_address) == 1_000
    assert attacker.functions.reentrySucceeded().call() == 0
    assert chain.errors.decode(attacker.functions.reentryError().call()).name == "ReentrantCall"
    assert chain.balance_of(chain.address) == 5_000

    root, proofs = rewards_root({attacker_address: 400, worker.address: 1})
    chain.signed_anchor(owner, [owner], 1, keccak(b"entries"), root, 2)
    chain.fund_rewards(owner, 1_000)
    chain.transact(worker, attacker.functions.attackClaim(400, proofs[attacker_address]))
    assert chain.balance_of(attacker_address) == 1_400
    assert attacker.functions.reentrySucceeded().call() == 0
    assert chain.errors.decode(attacker.functions.reentryError().call()).name == "ReentrantCall"
    assert chain.reward_pool() == 600


def test_a_worker_that_refuses_payment_keeps_its_unbonding_stake(chain: ChainClient):
    worker = chain.dev_keys[2]
    artifact = Artifact.load("test/ReentrantAttacker")
    refusing = chain.contract_at(artifact, chain.deploy_artifact(worker, artifact, chain.address).contract_address)
    chain.transact(worker, refusing.functions.stake(), value=700)
    chain.transact(worker, refusing.functions.requestUnstake(700))
    chain.transact(worker, refusing.functions.setRejectPayments(True))
    chain.advance_time(UNBONDING_DELAY + 1)
    with reverts("TransferFailed") as failed:
        chain.transact(worker, refusing.functions.withdraw())
    assert failed.value.args_ == {"to": refusing.address, "amount": 700}
    assert chain.stake_info(refusing.address).unbonding == 700  # the whole withdraw was undone


def test_every_custom_error_is_exercised_by_name():
    source = "".join(path.read_text() for path in Path(__file__).parent.glob("test_*.py"))
    declared = {e["name"] for e in Artifact.load().abi if e["type"] == "error"}
    exercised = set(re.findall(r'reverts\("(\w+)"\)', source)) | set(re.findall(r'name == "(\w+)"', source))
    assert declared - exercised == set()


def test_concurrent_senders_share_one_nonce_counter(chain: ChainClient):
    worker = chain.dev_keys[2]
    errors: list[BaseException] = []

    def stake_once() -> None:
        try:
            chain.stake(worker, 1)
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=stake_once) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert chain.stake_of(worker.address) == 4


def test_a_nonce_taken_by_another_process_is_retried(chain: ChainClient, monkeypatch):
    worker = chain.dev_keys[2]
    chain.stake(worker, 1)
    real = chain.w3.eth.get_transaction_count
    answers: list[int] = []

    def stale_once(address, block="latest"):
        # The first read races another sender of the same key: it sees one transaction fewer than the node.
        answers.append(real(address, block) - (0 if answers else 1))
        return answers[-1]

    monkeypatch.setattr(chain.w3.eth, "get_transaction_count", stale_once)
    chain._nonces.clear()
    chain.stake(worker, 1)
    assert answers[1] == answers[0] + 1
    assert chain.stake_of(worker.address) == 2


def test_fund_lets_a_fresh_key_stake_and_events_replay_in_order(chain: ChainClient):
    start = chain.block_number + 1
    fresh = SigningKey.generate()
    chain.fund(fresh.address, ETHER)
    assert chain.balance_of(fresh.address) == ETHER
    chain.stake(fresh, ETHER // 2)
    chain.request_unstake(fresh, ETHER // 4)
    chain.signed_slash(chain.dev_keys[0], [chain.dev_keys[0]], fresh.address, 5, keccak(b"e"))
    events = chain.events_since(start)
    assert [type(e).__name__ for e in events] == ["Staked", "UnstakeRequested", "Slashed"]
    assert all(e.worker == fresh.address for e in events)
    assert [e.block_number for e in events] == sorted(e.block_number for e in events)
    assert chain.events_since(chain.block_number + 1) == []


def test_the_transaction_of_a_slash_or_an_anchor_is_found_by_its_indexed_fields(chain: ChainClient):
    """What the outbox asks after a crash between sending and recording: which transaction did it?"""
    worker = SigningKey.generate()
    chain.fund(worker.address, ETHER)
    chain.stake(worker, ETHER // 2)
    evidence = keccak(b"the slash a crashed validator sent")
    slashed = chain.signed_slash(chain.dev_keys[0], [chain.dev_keys[0]], worker.address, 5, evidence)
    latest = chain.latest_anchor()
    epoch = (latest.latest_epoch if latest.count else 0) + 1
    anchored = chain.signed_anchor(chain.dev_keys[0], [chain.dev_keys[0]], epoch, keccak(b"e"), keccak(b"r"), 1)
    assert chain.event_tx("Slashed", None, evidence) == slashed.tx_hash
    assert chain.event_tx("Slashed", bytes.fromhex(worker.address[2:]), evidence) == slashed.tx_hash  # padded to 32 bytes
    assert chain.event_tx("Slashed", None, keccak(b"never used")) is None
    assert chain.event_tx("Anchored", epoch.to_bytes(32, "big")) == anchored.tx_hash
    assert chain.event_tx("Anchored", (epoch + 1).to_bytes(32, "big")) is None
    with pytest.raises(ValueError, match="no event"):
        chain.event_tx("Minted")


def rewards_root(cumulative: dict[str, int]) -> tuple[bytes, dict[str, list[bytes]]]:
    """The rewards root and every worker's claim proof, made by the ledger (what validators anchor)."""
    proofs = {worker: epochs.reward_proof(1, cumulative, worker) for worker in cumulative}
    assert all(p.verify() for p in proofs.values())
    root = bytes.fromhex(epochs.rewards_root(cumulative)[2:])
    return root, {w: [bytes.fromhex(h[2:]) for h in p.proof] for w, p in proofs.items()}


def _where(result) -> tuple[int, int, str]:
    """The (block_number, log_index, tx_hash) of the first event of a one-transaction result."""
    return result.events[0].block_number, result.events[0].log_index, result.tx_hash
