"""I7 (accountable validators): a slash or an anchor needs `threshold` distinct validators' EIP-712 signatures,
so one validator key alone can neither slash nor anchor. Every rule runs on the in-process EVM and on anvil.

The set here: the owner `dev_keys[0]` and two fresh keys, threshold 2. Validators only sign; anyone (here a
worker's key, to show it) may submit a signed order and pay its gas.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_hash.auto import keccak

from ledger.chain.client import ChainClient
from ledger.chain.orders import AnchorOrder, OrderDomain, SlashOrder, pack_signatures, sign_order, signer_of
from tests.chain.test_contract import reverts, rewards_root

ETHER = 10**18
DAY = 24 * 3600


@pytest.fixture
def network(chain: ChainClient):
    """(chain, validators sorted by address, a relayer that is no validator), threshold 2 of 3."""
    owner = chain.dev_keys[0]
    others = [Account.create() for _ in range(2)]
    for key in others:
        chain.add_validator(owner, key.address)
    chain.set_threshold(owner, 2)
    validators = sorted([owner, *others], key=lambda k: int(k.address, 16))
    return chain, validators, chain.dev_keys[3]


def slash_order(chain: ChainClient, worker: str, amount: int, evidence: bytes) -> SlashOrder:
    return SlashOrder(worker, amount, evidence, chain.order_deadline())


def anchor_order(chain: ChainClient, epoch: int, rewards: bytes = b"\x11" * 32) -> AnchorOrder:
    return AnchorOrder(epoch, keccak(b"entries %d" % epoch), rewards, 3, chain.order_deadline())


def signed(chain: ChainClient, order, *keys) -> bytes:
    """Signatures in exactly the order given (not sorted), to build the malformed sets the contract refuses."""
    return b"".join(sign_order(k, order, chain.domain) for k in keys)


def test_one_validator_key_alone_cannot_slash_an_honest_worker(network):
    chain, (rogue, *_), relayer = network
    honest = chain.dev_keys[2]
    chain.stake(honest, ETHER)
    order = slash_order(chain, honest.address, ETHER, keccak(b"made up"))
    with reverts("TooFewSignatures") as refused:
        chain.slash(relayer, order, signed(chain, order, rogue))
    assert refused.value.args_ == {"given": 1, "threshold": 2}
    assert chain.stake_of(honest.address) == ETHER and not chain.evidence_used(order.evidence_hash)


def test_one_validator_key_alone_cannot_anchor_a_root_that_pays_itself(network):
    chain, (rogue, *_), relayer = network
    chain.fund_rewards(chain.dev_keys[0], ETHER)
    root, proofs = rewards_root({rogue.address: ETHER})
    order = anchor_order(chain, 1, root)
    with reverts("TooFewSignatures"):
        chain.anchor(relayer, order, signed(chain, order, rogue))
    with reverts("NoRewardsRoot"):
        chain.claim(chain.dev_keys[4], ETHER, proofs[rogue.address])
    assert chain.reward_pool() == ETHER and chain.latest_anchor().count == 0


def test_anchors_advance_exactly_one_epoch_so_none_can_freeze_the_contract(network):
    chain, validators, relayer = network
    for epoch in (2**256 - 1, 0, 2):  # the last epoch, a repeat of none, a skipped one
        order = anchor_order(chain, epoch)
        with reverts("EpochNotNext") as skipped:
            chain.anchor(relayer, order, chain.sign_all(order, validators[:2]))
        assert skipped.value.args_ == {"epoch": epoch, "expected": 1}
    for epoch in (1, 2):
        chain.anchor(relayer, anchor_order(chain, epoch), chain.sign_all(anchor_order(chain, epoch), validators[1:]))
    again = anchor_order(chain, 2)
    with reverts("EpochNotNext"):
        chain.anchor(relayer, again, chain.sign_all(again, validators))
    latest = chain.latest_anchor()
    assert (latest.count, latest.latest_epoch) == (2, 2)
    assert chain.entries_root_of(2) == keccak(b"entries 2")


def test_t_distinct_validators_slash_up_to_the_stake_and_the_relayer_only_pays_gas(network):
    chain, validators, relayer = network
    worker, treasury = chain.dev_keys[2], chain.dev_keys[1].address
    chain.stake(worker, 100)
    order = slash_order(chain, worker.address, 150, keccak(b"evidence"))  # more than the stake: takes all there is
    before = chain.balance_of(treasury)
    slashed = chain.slash(relayer, order, chain.sign_all(order, validators[:2]))
    assert (slashed.events[0].amount, slashed.events[0].validator) == (100, relayer.address)
    assert chain.stake_of(worker.address) == 0 and chain.balance_of(treasury) == before + 100
    with reverts("EvidenceAlreadyUsed"):
        chain.slash(relayer, order, chain.sign_all(order, validators[:2]))
    empty = slash_order(chain, worker.address, 1, keccak(b"more evidence"))
    with reverts("NothingToSlash"):
        chain.slash(relayer, empty, chain.sign_all(empty, validators[:2]))


def test_a_repeated_unsorted_or_outside_signer_reverts(network):
    chain, (low, mid, high), relayer = network
    worker = chain.dev_keys[2]
    chain.stake(worker, ETHER)
    order = slash_order(chain, worker.address, ETHER, keccak(b"evidence"))
    with reverts("SignerOutOfOrder") as repeated:
        chain.slash(relayer, order, signed(chain, order, mid, mid))
    assert repeated.value.args_ == {"signer": mid.address}
    with reverts("SignerOutOfOrder"):
        chain.slash(relayer, order, signed(chain, order, high, low))
    outsider = Account.create()
    with reverts("NotValidator") as outside:
        chain.slash(relayer, order, pack_signatures({k.address: sign_order(k, order, chain.domain) for k in (low, outsider)}))
    assert outside.value.args_ == {"signer": outsider.address}
    assert chain.stake_of(worker.address) == ETHER


def test_a_signature_for_another_contract_or_chain_reverts(network):
    chain, (low, mid, high), relayer = network
    worker = chain.dev_keys[2]
    chain.stake(worker, ETHER)
    order = slash_order(chain, worker.address, ETHER, keccak(b"evidence"))
    for foreign in (OrderDomain(chain.chain_id, "0x" + "ab" * 20), OrderDomain(chain.chain_id + 1, chain.address)):
        signature = sign_order(mid, order, foreign)
        assert signer_of(order, foreign, signature) == mid.address
        with reverts("NotValidator"):  # recovered in this contract's domain, it names some unrelated key
            chain.slash(relayer, order, signed(chain, order, low) + signature if low.address < mid.address else signature)
    assert chain.stake_of(worker.address) == ETHER


def test_a_high_s_twin_a_bad_length_and_an_expired_order_revert(network):
    chain, (low, mid, _), relayer = network
    worker = chain.dev_keys[2]
    chain.stake(worker, ETHER)
    order = slash_order(chain, worker.address, ETHER, keccak(b"evidence"))
    good = sign_order(mid, order, chain.domain)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    twin = good[:32] + (n - int.from_bytes(good[32:64], "big")).to_bytes(32, "big") + bytes([55 - good[64]])
    with reverts("InvalidSignature") as high_s:
        chain.slash(relayer, order, signed(chain, order, low) + twin)
    assert high_s.value.args_ == {"index": 1}
    with reverts("InvalidSignature"):
        chain.slash(relayer, order, signed(chain, order, low, mid)[:-1])
    stale = SlashOrder(worker.address, ETHER, keccak(b"evidence"), chain.timestamp() + DAY)
    stale_signatures = chain.sign_all(stale, (low, mid))
    chain.advance_time(DAY + 10)
    with reverts("OrderExpired"):
        chain.slash(relayer, stale, stale_signatures)


def test_the_owner_keeps_the_threshold_reachable(network):
    chain, validators, relayer = network
    owner = chain.dev_keys[0]
    assert (chain.threshold(), chain.validator_count()) == (2, 3)
    for bad in (0, 4):
        with reverts("InvalidThreshold"):
            chain.set_threshold(owner, bad)
    with reverts("NotOwner"):
        chain.set_threshold(relayer, 1)
    chain.set_threshold(owner, 3)
    with reverts("InvalidThreshold") as unreachable:
        chain.remove_validator(owner, validators[0].address)
    assert unreachable.value.args_ == {"threshold": 3, "validatorCount": 2}
    order = anchor_order(chain, 1)
    with reverts("TooFewSignatures"):
        chain.anchor(relayer, order, chain.sign_all(order, validators[:2]))
    chain.anchor(relayer, order, chain.sign_all(order, validators))

    chain.deploy(owner, treasury=owner.address)  # a contract with no validators: no threshold, no order executes
    with reverts("ThresholdNotSet"):
        chain.anchor(relayer, AnchorOrder(1, bytes(32), bytes(32), 0, chain.order_deadline()), b"")


def test_the_owner_recovers_pool_funds_only_after_an_announced_delay(network):
    chain, _, relayer = network
    owner, to = chain.dev_keys[0], chain.dev_keys[4].address
    chain.fund_rewards(relayer, 1_000)
    with reverts("NoRecoveryAnnounced"):
        chain.execute_recovery(owner)
    with reverts("NotOwner"):
        chain.announce_recovery(relayer, relayer.address, 1_000)
    announced = chain.announce_recovery(owner, to, 600)
    delay = chain.contract.functions.RECOVERY_DELAY().call()
    assert delay == 30 * DAY and announced.events[0].executable_at == chain.timestamp() + delay
    with reverts("RecoveryNotDue"):
        chain.execute_recovery(owner)
    chain.cancel_recovery(owner)
    with reverts("NoRecoveryAnnounced"):
        chain.cancel_recovery(owner)
    chain.announce_recovery(owner, to, 600)
    chain.advance_time(delay + 1)
    before = chain.balance_of(to)
    executed = chain.execute_recovery(owner)
    assert type(executed.events[0]).__name__ == "RecoveryExecuted"
    assert chain.balance_of(to) == before + 600 and chain.reward_pool() == 400
    assert chain.pending_recovery().executable_at == 0
    chain.announce_recovery(owner, to, 401)
    chain.advance_time(delay + 1)
    with reverts("InsufficientRewardPool"):
        chain.execute_recovery(owner)
    with reverts("ZeroAmount"):
        chain.announce_recovery(owner, to, 0)
