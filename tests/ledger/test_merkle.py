"""The Merkle encoding the contract's claim() verifies: OpenZeppelin sorted pairs, odd node promoted."""

import pytest
from eth_abi import encode
from eth_hash.auto import keccak

from ledger import epochs, merkle
from tests.ledger.helpers import address


def leaf(i: int) -> bytes:
    return keccak(i.to_bytes(32, "big"))


def pair(a: bytes, b: bytes) -> bytes:
    return keccak(min(a, b) + max(a, b))


def test_small_trees_by_hand():
    a, b, c, d, e = (leaf(i) for i in range(5))
    assert merkle.root([]) == bytes(32)
    assert merkle.root([a]) == a
    assert merkle.root([a, b]) == pair(a, b) == merkle.root([b, a])
    assert merkle.root([a, b, c]) == pair(pair(a, b), c)  # c promoted unchanged
    assert merkle.root([a, b, c, d, e]) == pair(pair(pair(a, b), pair(c, d)), e)
    assert merkle.proof([a, b, c, d, e], 4) == [pair(pair(a, b), pair(c, d))]
    assert merkle.proof([a, b, c], 1) == [a, c]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33])
def test_every_leaf_proves_and_a_wrong_one_does_not(n):
    leaves = [leaf(i) for i in range(n)]
    root = merkle.root(leaves)
    for i in range(n):
        path = merkle.proof(leaves, i)
        assert merkle.verify(leaves[i], path, root)
        assert not merkle.verify(leaf(1000 + i), path, root)
        if path:
            assert not merkle.verify(leaves[i], path[:-1] + [leaf(999)], root)


def test_proofs_checked_with_a_shared_memo_give_the_same_roots_and_still_catch_a_wrong_sibling():
    """A dataset verify checks every row's proof with one memo of pair hashes per epoch."""
    leaves = [leaf(i) for i in range(33)]
    root, memo = merkle.root(leaves), {}
    for i in range(33):
        assert merkle.process_proof(leaves[i], merkle.proof(leaves, i), memo) == root
    assert memo  # the upper pairs were hashed once and looked up after
    wrong = merkle.proof(leaves, 5)
    wrong[-1] = leaf(999)
    assert merkle.process_proof(leaves[5], wrong, memo) != root
    assert merkle.process_proof(leaves[5], wrong, memo) == merkle.process_proof(leaves[5], wrong)


def test_reward_leaf_is_the_double_hash_of_abi_encoding():
    worker = address(0xABC)
    expected = keccak(keccak(encode(["address", "uint256"], [worker, 10**21])))
    assert merkle.reward_leaf(worker, 10**21) == expected
    assert merkle.reward_leaf(worker, 10**21 + 1) != expected
    for amount in (0, 1, 2**255, 2**256 - 1):
        assert merkle.abi_encode_reward(worker.lower(), amount) == encode(["address", "uint256"], [worker, amount])


def test_reward_proofs_for_every_worker():
    cumulative = {address(i): 10**18 * i for i in range(1, 12)} | {address(99): 0}
    root = epochs.rewards_root(cumulative)
    for worker, amount in cumulative.items():
        proof = epochs.reward_proof(3, cumulative, worker.lower())
        if amount == 0:
            assert proof is None  # nothing to claim, no leaf
            continue
        assert proof.rewards_root == root and proof.cumulative == amount and proof.verify()
        forged = epochs.RewardProof(3, worker, amount + 1, proof.proof, root)
        assert not forged.verify()
    assert epochs.rewards_root({}) == "0x" + "00" * 32


def test_entry_proofs():
    hashes = ["0x" + leaf(i).hex() for i in range(6)]
    for seq in range(11, 17):
        proof = epochs.entry_proof(2, 11, hashes, seq)
        assert proof.entry_hash == hashes[seq - 11] and proof.verify()
        assert proof.entries_root == epochs.entries_root(hashes)


def test_parent_level_builds_the_same_tree_packed():
    for count in range(1, 12):
        leaves = [bytes([i]) * 32 for i in range(count)]
        packed = [b"".join(leaves)]
        while len(packed[-1]) > 32:
            packed.append(merkle.parent_level(packed[-1]))
        assert packed == [b"".join(level) for level in merkle.levels(leaves)]
