"""A stand-in for ledger.merkle until it lands: the same encoding the contract's claim() verifies.

keccak256 over sorted pairs (OpenZeppelin MerkleProof), an odd node promoted unchanged, reward leaf =
keccak256(keccak256(abi.encode(address, uint256))).
"""

from __future__ import annotations

from eth_abi import encode
from eth_hash.auto import keccak


def reward_leaf(account: str, cumulative_amount: int) -> bytes:
    return keccak(keccak(encode(["address", "uint256"], [account, cumulative_amount])))


def _parent(a: bytes, b: bytes) -> bytes:
    return keccak(min(a, b) + max(a, b))


def root_and_proofs(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    if not leaves:
        return bytes(32), []
    proofs: list[list[bytes]] = [[] for _ in leaves]
    positions = list(range(len(leaves)))  # index of each leaf's ancestor in the current level
    level = list(leaves)
    while len(level) > 1:
        for leaf, pos in enumerate(positions):
            sibling = pos ^ 1
            if sibling < len(level):
                proofs[leaf].append(level[sibling])
        level = [_parent(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
        positions = [pos // 2 for pos in positions]
    return level[0], proofs


def rewards_root(cumulative: dict[str, int]) -> tuple[bytes, dict[str, list[bytes]]]:
    accounts = sorted(cumulative)
    root, proofs = root_and_proofs([reward_leaf(a, cumulative[a]) for a in accounts])
    return root, dict(zip(accounts, proofs))
