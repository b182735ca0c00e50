"""I7 (accountable validators): one validator key alone can neither slash nor anchor. Run on both backends."""

from __future__ import annotations

import pytest
from eth_hash.auto import keccak

from ledger.chain.client import ChainClient
from ledger.chain.errors import ContractRevert
from tests.chain.test_contract import rewards_root

ETHER = 10**18


def test_one_validator_key_alone_cannot_slash_an_honest_worker(chain: ChainClient):
    owner, rogue, honest = chain.dev_keys[0], chain.dev_keys[4], chain.dev_keys[2]
    chain.add_validator(owner, rogue.address)
    chain.stake(honest, ETHER)
    with pytest.raises(ContractRevert):
        chain.slash(rogue, honest.address, ETHER, keccak(b"made up"))
    assert chain.stake_of(honest.address) == ETHER


def test_one_validator_key_alone_cannot_anchor_a_root_that_pays_itself(chain: ChainClient):
    owner, rogue = chain.dev_keys[0], chain.dev_keys[4]
    chain.add_validator(owner, rogue.address)
    chain.fund_rewards(owner, ETHER)
    root, proofs = rewards_root({rogue.address: ETHER})
    with pytest.raises(ContractRevert):
        chain.anchor(rogue, 1, keccak(b"entries"), root, 1)
    with pytest.raises(ContractRevert):
        chain.claim(rogue, ETHER, proofs[rogue.address])
    assert chain.reward_pool() == ETHER


def test_no_one_can_anchor_the_last_epoch_and_freeze_the_contract(chain: ChainClient):
    owner = chain.dev_keys[0]
    with pytest.raises(ContractRevert):
        chain.anchor(owner, 2**256 - 1, keccak(b"entries"), keccak(b"rewards"), 1)
