"""Epoch roots and claim proofs, as pure functions of journal data.

An epoch covers the journal entries [first_seq, last_seq] that follow the previous epoch. It commits to:
- `entries_root`: the Merkle root of those entries' hashes, in journal order;
- `rewards_root`: the Merkle root of one leaf per worker that has ever been rewarded, holding the worker's
  *cumulative* reward up to and including `last_seq`, leaves ordered by address (lowercase hex).
Cumulative means every reward ever credited, net of nothing: slashes take from stake on chain and never
from rewards, so the amount a worker can claim only grows and the contract pays the difference to what it
has already paid. The store keeps per-worker totals; `verify` recomputes these roots from the journal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ledger import merkle


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def _bytes(value: str) -> bytes:
    return bytes.fromhex(value[2:] if value.startswith("0x") else value)


def reward_order(cumulative: Mapping[str, int]) -> list[tuple[str, int]]:
    """The rewards tree's leaves in order: workers with a positive cumulative reward, by address."""
    return sorted(((w, a) for w, a in cumulative.items() if a > 0), key=lambda item: item[0].lower())


def rewards_root(cumulative: Mapping[str, int]) -> str:
    return _hex(merkle.root([merkle.reward_leaf(w, a) for w, a in reward_order(cumulative)]))


def entries_root(entry_hashes: Sequence[str]) -> str:
    return _hex(merkle.root([_bytes(h) for h in entry_hashes]))


@dataclass(frozen=True)
class RewardProof:
    """What a worker sends to the contract's claim(): its cumulative amount and the path to the root."""

    epoch: int
    worker: str
    cumulative: int
    proof: tuple[str, ...]
    rewards_root: str

    def verify(self) -> bool:
        return merkle.verify_reward(self.worker, self.cumulative, [_bytes(p) for p in self.proof], _bytes(self.rewards_root))

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "worker": self.worker,
            "cumulative": str(self.cumulative),
            "proof": list(self.proof),
            "rewards_root": self.rewards_root,
        }


@dataclass(frozen=True)
class EntryProof:
    """That the journal entry at `seq` (hash `entry_hash`) is part of epoch `epoch`."""

    epoch: int
    seq: int
    entry_hash: str
    proof: tuple[str, ...]
    entries_root: str

    def verify(self) -> bool:
        return merkle.verify_entry(_bytes(self.entry_hash), [_bytes(p) for p in self.proof], _bytes(self.entries_root))

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "seq": self.seq,
            "entry_hash": self.entry_hash,
            "proof": list(self.proof),
            "entries_root": self.entries_root,
        }


@dataclass(frozen=True)
class RewardTree:
    """One epoch's rewards tree, built once: a closed epoch never changes, and each claim proof is then a
    walk up its levels instead of a rebuild (10,000 workers: one keccak tree, not one per proof)."""

    epoch: int
    leaves: tuple[tuple[str, int], ...]  # (worker, cumulative) in reward_order
    index: Mapping[str, int]  # lowercase address -> leaf position
    levels: tuple[tuple[bytes, ...], ...]

    @classmethod
    def build(cls, epoch: int, cumulative: Mapping[str, int]) -> "RewardTree":
        order = reward_order(cumulative)
        tree = merkle.levels([merkle.reward_leaf(w, a) for w, a in order])
        return cls(epoch, tuple(order), {w.lower(): i for i, (w, _) in enumerate(order)}, tuple(map(tuple, tree)))

    def proof(self, worker: str) -> RewardProof | None:
        """The claim proof for `worker`; None if it has no leaf (nothing earned by this epoch)."""
        position = self.index.get(worker.lower())
        if position is None:
            return None
        return RewardProof(
            epoch=self.epoch,
            worker=self.leaves[position][0],
            cumulative=self.leaves[position][1],
            proof=tuple(_hex(p) for p in merkle.proof_from_levels(self.levels, position)),
            rewards_root=_hex(self.levels[-1][0]),
        )


def reward_proof(epoch: int, cumulative: Mapping[str, int], worker: str) -> RewardProof | None:
    """The claim proof for `worker` in an epoch whose leaves are `cumulative`; None if it has no leaf."""
    return RewardTree.build(epoch, cumulative).proof(worker)


def entry_proof(epoch: int, first_seq: int, entry_hashes: Sequence[str], seq: int) -> EntryProof:
    """The inclusion proof of the entry at `seq` in an epoch starting at `first_seq`."""
    index = seq - first_seq
    leaves = [_bytes(h) for h in entry_hashes]
    path = merkle.proof(leaves, index)
    return EntryProof(
        epoch=epoch,
        seq=seq,
        entry_hash=entry_hashes[index],
        proof=tuple(_hex(p) for p in path),
        entries_root=_hex(merkle.root(leaves)),
    )
