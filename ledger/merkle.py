"""Merkle trees that OpenZeppelin's `MerkleProof.verify` accepts, and the leaves the ledger puts in them.

The encoding is fixed by the staking contract's `claim()`, so it must not drift:
- a parent is keccak256(min(a, b) || max(a, b)) (sorted pairs, so a proof carries no left/right bits);
- a level with an odd number of nodes promotes its last node unchanged to the next level;
- the root of no leaves is 32 zero bytes; the root of one leaf is that leaf;
- a reward leaf is keccak256(keccak256(abi.encode(address worker, uint256 cumulativeAmount))) (OpenZeppelin's
  double hash, so a leaf can never be mistaken for an inner node);
- an entries leaf is the journal entry's hash itself.
Leaves are hashed in the order given; the ledger orders entries by position and rewards by address.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_abi import encode as abi_encode

try:  # the C Keccak of safe-pysha3 is about 5x faster than pycryptodome's, where it is installed
    from sha3 import keccak_256 as _keccak_256

    def keccak(data: bytes) -> bytes:
        return _keccak_256(data).digest()

except ImportError:  # pragma: no cover - depends on the environment
    from eth_hash.auto import keccak as _eth_keccak

    def keccak(data: bytes) -> bytes:
        return _eth_keccak(data)


ZERO_HASH = bytes(32)


def hash_pair(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin's commutative pair hash."""
    return keccak(a + b) if a < b else keccak(b + a)


def levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first, root last."""
    level = list(leaves)
    out = [level]
    while len(level) > 1:
        nxt = [hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        out.append(nxt)
        level = nxt
    return out


def parent_level(level: bytes) -> bytes:
    """The level above `level`, both packed as 32 bytes a node: pairs hashed, an odd last node promoted. What
    `levels` does, without a Python object per node kept (a million leaves are 32 MB, not a hundred)."""
    pairs = range(0, len(level) - 32, 64)
    parents = [keccak(a + b) if a < b else keccak(b + a) for a, b in
               ((level[i:i + 32], level[i + 32:i + 64]) for i in pairs)]
    if len(level) % 64:
        parents.append(level[-32:])
    return b"".join(parents)


def root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle root of `leaves`; 32 zero bytes when there are none."""
    if not leaves:
        return ZERO_HASH
    return levels(leaves)[-1][0]


def proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The sibling hashes that lead from leaf `index` to the root (none where a node was promoted)."""
    return proof_from_levels(levels(leaves), index)


def proof_from_levels(tree: Sequence[Sequence[bytes]], index: int) -> list[bytes]:
    """`proof` from a tree already built by `levels` (one tree, many proofs)."""
    if not tree or not 0 <= index < len(tree[0]):
        raise IndexError(f"leaf {index} is not in a tree of {len(tree[0]) if tree else 0} leaves")
    path: list[bytes] = []
    for level in tree[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index //= 2
    return path


def process_proof(leaf: bytes, path: Sequence[bytes], memo: dict[bytes, bytes] | None = None) -> bytes:
    """The root that `path` leads to from `leaf` (OpenZeppelin MerkleProof.processProof). `memo`: pair hashes
    already computed, by the 64 bytes hashed (filled here): proofs of leaves of one tree share their upper
    nodes, so checking many of them hashes each shared pair once."""
    computed = leaf
    if memo is None:
        for sibling in path:  # hash_pair, inlined: a dataset verify walks millions of these
            computed = keccak(computed + sibling) if computed < sibling else keccak(sibling + computed)
        return computed
    for sibling in path:
        pair = computed + sibling if computed < sibling else sibling + computed
        found = memo.get(pair)
        if found is None:
            found = memo[pair] = keccak(pair)
        computed = found
    return computed


def verify(leaf: bytes, path: Sequence[bytes], expected_root: bytes) -> bool:
    """True when `path` proves `leaf` is in the tree whose root is `expected_root`."""
    return process_proof(leaf, path) == expected_root


def abi_encode_reward(worker: str, cumulative: int) -> bytes:
    """abi.encode(address, uint256), written out: two 32-byte words, the address left-padded with zeros.
    Byte-identical to eth_abi.encode(["address", "uint256"], ...) (tested) and about 50 times faster, which
    matters when an epoch has tens of thousands of leaves."""
    raw = bytes.fromhex(worker[2:] if worker[:2] in ("0x", "0X") else worker)
    if len(raw) != 20 or not 0 <= cumulative < 2**256:
        return abi_encode(["address", "uint256"], [worker, cumulative])  # let eth_abi explain what is wrong
    return bytes(12) + raw + cumulative.to_bytes(32, "big")


def reward_leaf(worker: str, cumulative: int) -> bytes:
    """keccak256(keccak256(abi.encode(worker, cumulative))), the leaf the contract's claim() rebuilds."""
    return keccak(keccak(abi_encode_reward(worker, cumulative)))


def verify_reward(worker: str, cumulative: int, path: Sequence[bytes], rewards_root: bytes) -> bool:
    """True when `path` proves that `worker` had earned `cumulative` wei in total as of `rewards_root`."""
    return verify(reward_leaf(worker, cumulative), path, rewards_root)


def verify_entry(entry_hash: bytes, path: Sequence[bytes], entries_root: bytes) -> bool:
    """True when `path` proves that the journal entry with hash `entry_hash` is in the epoch of `entries_root`."""
    return verify(entry_hash, path, entries_root)
