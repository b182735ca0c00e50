"""The staking contract's events: one dataclass each, decoded from raw logs by the contract's ABI.

`EventDecoder(abi)` knows each event's topic (the keccak256 of its signature); `decode(contract, log)`
turns a log of the contract into its `ChainEvent` (None for a log that is not one of `EVENT_TYPES`), fields
in snake case, addresses checksummed, bytes as bytes. `ChainClient.events_since` and the events of a
`TxResult` come from here; `ledger.chain.sync` journals them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from eth_hash.auto import keccak
from eth_utils import to_checksum_address

from ledger.chain.abi import abi_signature


@dataclass(frozen=True)
class ChainEvent:
    """Where an event was logged. (block_number, log_index) orders events and identifies one."""

    block_number: int
    log_index: int
    tx_hash: str

    @property
    def event_id(self) -> str:
        return f"{self.tx_hash}:{self.log_index}"


@dataclass(frozen=True)
class Staked(ChainEvent):
    worker: str
    amount: int
    total_stake: int


@dataclass(frozen=True)
class UnstakeRequested(ChainEvent):
    worker: str
    amount: int
    total_unbonding: int
    release_at: int


@dataclass(frozen=True)
class Withdrawn(ChainEvent):
    worker: str
    amount: int


@dataclass(frozen=True)
class Slashed(ChainEvent):
    worker: str
    evidence_hash: bytes
    validator: str
    amount: int


@dataclass(frozen=True)
class Anchored(ChainEvent):
    epoch: int
    entries_root: bytes
    rewards_root: bytes
    entry_count: int
    validator: str


@dataclass(frozen=True)
class Claimed(ChainEvent):
    account: str
    amount: int
    cumulative_amount: int


@dataclass(frozen=True)
class RewardsFunded(ChainEvent):
    funder: str
    amount: int
    pool: int


@dataclass(frozen=True)
class ValidatorAdded(ChainEvent):
    validator: str


@dataclass(frozen=True)
class ValidatorRemoved(ChainEvent):
    validator: str


@dataclass(frozen=True)
class ThresholdChanged(ChainEvent):
    threshold: int


@dataclass(frozen=True)
class RecoveryAnnounced(ChainEvent):
    to: str
    amount: int
    executable_at: int


@dataclass(frozen=True)
class RecoveryCancelled(ChainEvent):
    to: str
    amount: int


@dataclass(frozen=True)
class RecoveryExecuted(ChainEvent):
    to: str
    amount: int


@dataclass(frozen=True)
class TreasuryChanged(ChainEvent):
    treasury: str


@dataclass(frozen=True)
class OwnershipTransferred(ChainEvent):
    previous_owner: str
    new_owner: str


EVENT_TYPES: dict[str, type[ChainEvent]] = {
    cls.__name__: cls
    for cls in (
        Staked,
        UnstakeRequested,
        Withdrawn,
        Slashed,
        Anchored,
        Claimed,
        RewardsFunded,
        ValidatorAdded,
        ValidatorRemoved,
        ThresholdChanged,
        RecoveryAnnounced,
        RecoveryCancelled,
        RecoveryExecuted,
        TreasuryChanged,
        OwnershipTransferred,
    )
}


class EventDecoder:
    """Raw logs of one contract to `ChainEvent`s, by the topics of its ABI's events."""

    def __init__(self, abi: Iterable[dict[str, Any]]) -> None:
        self.topics: dict[bytes, str] = {
            keccak(abi_signature(e).encode()): e["name"] for e in abi if e.get("type") == "event"
        }

    def topic(self, name: str) -> bytes | None:
        """Topic 0 of event `name`; None when the ABI has no such event."""
        return next((topic for topic, event in self.topics.items() if event == name), None)

    def decode(self, contract: Any, entry: Any) -> ChainEvent | None:
        """The event a log of `contract` (a web3 contract object) records; None for any other log."""
        if not entry["topics"]:
            return None
        name = self.topics.get(bytes(entry["topics"][0]))
        if name is None or name not in EVENT_TYPES:
            return None
        decoded = getattr(contract.events, name)().process_log(entry)
        fields = {_snake(k): _plain(v) for k, v in decoded["args"].items()}
        return EVENT_TYPES[name](
            block_number=int(entry["blockNumber"]),
            log_index=int(entry["logIndex"]),
            tx_hash="0x" + bytes(entry["transactionHash"]).hex(),
            **fields,
        )


def _snake(name: str) -> str:
    name = name.rstrip("_")
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return to_checksum_address(value)
    return value
