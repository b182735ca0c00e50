"""Journal entries and the hash chain that links them (PROTOCOL "Ledger and chain").

An entry is a small frozen value. Its hash commits to every field and to the hash of the entry before it:

    entry_hash = keccak256(prev_hash || canonical_bytes(entry))

where `canonical_bytes` is compact JSON with sorted keys, amounts and other big integers as decimal
strings, addresses checksummed, hashes lowercase `0x` hex, and `prev_hash` is 32 raw bytes (the first
entry's prev_hash is 32 zero bytes). Change any stored field, or drop or reorder an entry, and every
later hash stops matching: `ledger.audit` names the first such entry.

Kinds: stake, unstake (chain events, `ref` = "tx_hash:log_index" makes re-reading them harmless), reward
(one per job and stage, PROTOCOL I6), slash (one per evidence hash), soft_invalidation (one per job, pays
nobody), anchor (one per epoch, written once the epoch's roots are on chain), sample (one per accepted job
whose output became a dataset row: `data` = {"sample": the row's digest, ledger.samples}; moves no money, and
puts every dataset row under an anchored entries root). Rewards and slashes are kept
apart: a slash is taken from the worker's *stake* on chain and never reduces the rewards that worker
has already earned, so the cumulative reward in an epoch's rewards root only ever grows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ledger.errors import InvalidInput
from ledger.merkle import ZERO_HASH, keccak

STAKE = "stake"
UNSTAKE = "unstake"
REWARD = "reward"
SLASH = "slash"
SOFT_INVALIDATION = "soft_invalidation"
ANCHOR = "anchor"
SAMPLE = "sample"
KINDS = (STAKE, UNSTAKE, REWARD, SLASH, SOFT_INVALIDATION, ANCHOR, SAMPLE)

ENCODING_VERSION = 1
GENESIS_HASH = "0x" + ZERO_HASH.hex()
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class EntryError(InvalidInput):
    """An entry that cannot be journaled as given: the message says which field and why."""


_ADDRESS = re.compile(r"0[xX][0-9a-fA-F]{40}")


def checksum(address: str) -> str:
    """The EIP-55 checksummed form of an address; a mixed-case input must already carry a valid checksum.

    Cached, and computed with the C keccak rather than eth_utils (about 30 times faster): a ledger
    ingesting a million entries sees the same few thousand workers over and over."""
    if not isinstance(address, str):
        raise EntryError(f"{address!r} is not an Ethereum address")
    return _checksum(address)


@lru_cache(maxsize=65536)
def _checksum(address: str) -> str:
    if not _ADDRESS.fullmatch(address):
        raise EntryError(f"{address!r} is not an Ethereum address")
    body = address[2:]
    lower = body.lower()
    digest = keccak(lower.encode()).hex()
    out = "0x" + "".join(c.upper() if d in "89abcdef" else c for c, d in zip(lower, digest))
    if body not in (lower, body.upper()) and body != out[2:]:
        raise EntryError(f"{address!r} is not an Ethereum address (bad EIP-55 checksum)")
    return out


def hash32(value: str | bytes, what: str) -> str:
    """A 32-byte hash as lowercase 0x hex."""
    if isinstance(value, bytes):
        if len(value) != 32:
            raise EntryError(f"{what} must be 32 bytes")
        return "0x" + value.hex()
    if isinstance(value, str):
        body = value[2:] if value.startswith(("0x", "0X")) else value
        if len(body) == 64:
            try:
                bytes.fromhex(body)
            except ValueError:
                pass
            else:
                return "0x" + body.lower()
    raise EntryError(f"{what} must be a 32-byte hex string, got {value!r}")


@dataclass(frozen=True)
class NewEntry:
    """An entry before it is journaled: no position or hashes yet. Build one with the functions below."""

    kind: str
    amount: int = 0
    worker: str | None = None
    job_id: str | None = None
    stage: int | None = None
    work_units: int | None = None
    evidence_hash: str | None = None
    epoch: int | None = None
    ref: str | None = None
    data: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EntryError(f"unknown journal kind {self.kind!r} (one of {', '.join(KINDS)})")
        if isinstance(self.amount, bool) or not isinstance(self.amount, int) or not 0 <= self.amount < 2**256:
            raise EntryError(f"amount must be an integer number of wei in [0, 2**256), got {self.amount!r}")
        if self.worker is not None:
            object.__setattr__(self, "worker", checksum(self.worker))
        if self.job_id is not None:
            object.__setattr__(self, "job_id", hash32(self.job_id, "job_id"))
        if self.evidence_hash is not None:
            object.__setattr__(self, "evidence_hash", hash32(self.evidence_hash, "evidence_hash"))
        for name in ("stage", "work_units", "epoch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise EntryError(f"{name} must be a non-negative integer, got {value!r}")
        if self.data is not None and not isinstance(self.data, dict):
            raise EntryError("data must be a JSON object")
        required = {
            STAKE: ("worker",),
            UNSTAKE: ("worker",),
            REWARD: ("worker", "job_id", "stage"),
            SLASH: ("worker", "evidence_hash"),
            SOFT_INVALIDATION: ("job_id",),
            ANCHOR: ("epoch",),
            SAMPLE: ("job_id",),
        }[self.kind]
        missing = [name for name in required if getattr(self, name) is None]
        if missing:
            raise EntryError(f"a {self.kind} entry needs {', '.join(missing)}")

    def identity(self) -> tuple[Any, ...] | None:
        """What makes this entry unique in the journal (the database enforces the same), or None."""
        if self.kind == REWARD:
            return (REWARD, self.job_id, self.stage)
        if self.kind == SLASH:
            return (SLASH, self.evidence_hash)
        if self.kind == SOFT_INVALIDATION:
            return (SOFT_INVALIDATION, self.job_id)
        if self.kind == ANCHOR:
            return (ANCHOR, self.epoch)
        if self.kind == SAMPLE:
            return (SAMPLE, self.job_id)
        return None


@dataclass(frozen=True)
class Entry(NewEntry):
    """A journaled entry: its position, time, and place in the hash chain."""

    seq: int = 0
    at_ms: int = 0
    prev_hash: str = GENESIS_HASH
    entry_hash: str = GENESIS_HASH

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "worker": self.worker,
            "amount": str(self.amount),
            "job_id": self.job_id,
            "stage": self.stage,
            "work_units": self.work_units,
            "evidence_hash": self.evidence_hash,
            "epoch": self.epoch,
            "ref": self.ref,
            "data": self.data,
            "at_ms": self.at_ms,
            "prev_hash": self.prev_hash,
            "entry_hash": self.entry_hash,
        }

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> "Entry":
        """The entry `to_json` wrote (a peer's epoch, an export): EntryError or KeyError when it is not one.
        Its hash is not checked here (`hash_fields` does that)."""
        return cls(
            item["kind"], int(item["amount"]), worker=item["worker"], job_id=item["job_id"], stage=item["stage"],
            work_units=item["work_units"], evidence_hash=item["evidence_hash"], epoch=item["epoch"], ref=item["ref"],
            data=item["data"], seq=int(item["seq"]), at_ms=int(item["at_ms"]),
            prev_hash=hash32(item["prev_hash"], "prev_hash"), entry_hash=hash32(item["entry_hash"], "entry_hash"),
        )


def stake(worker: str, amount: int, *, ref: str | None = None, data: dict[str, Any] | None = None) -> NewEntry:
    """Stake added on chain; `ref` ("tx_hash:log_index") makes re-reading the event a no-op."""
    return NewEntry(STAKE, amount, worker=worker, ref=ref, data=data)


def unstake(worker: str, amount: int, *, ref: str | None = None, data: dict[str, Any] | None = None) -> NewEntry:
    return NewEntry(UNSTAKE, amount, worker=worker, ref=ref, data=data)


def reward(
    worker: str, amount: int, *, job_id: str, stage: int, work_units: int, data: dict[str, Any] | None = None
) -> NewEntry:
    """Stage `stage` of an accepted job earned `amount` wei for `work_units` (layers x tokens)."""
    return NewEntry(REWARD, amount, worker=worker, job_id=job_id, stage=stage, work_units=work_units, data=data)


def slash(
    worker: str,
    amount: int,
    *,
    evidence_hash: str,
    job_id: str | None = None,
    stage: int | None = None,
    data: dict[str, Any] | None = None,
) -> NewEntry:
    """The blamed stage loses `amount` wei of stake; `data` keeps the evidence figures."""
    return NewEntry(SLASH, amount, worker=worker, job_id=job_id, stage=stage, evidence_hash=evidence_hash, data=data)


def soft_invalidation(job_id: str, *, data: dict[str, Any] | None = None) -> NewEntry:
    """A job that never completed: nobody paid, nobody slashed, but the fact is journaled."""
    return NewEntry(SOFT_INVALIDATION, 0, job_id=job_id, data=data)


def anchor(epoch: int, *, data: dict[str, Any] | None = None) -> NewEntry:
    """Epoch `epoch`'s roots are on chain (`data`: roots, tx hash)."""
    return NewEntry(ANCHOR, 0, epoch=epoch, data=data)


def sample(job_id: str, digest: str) -> NewEntry:
    """The accepted job `job_id` produced the dataset row whose digest is `digest` (ledger.samples)."""
    return NewEntry(SAMPLE, 0, job_id=job_id, data={"sample": hash32(digest, "sample digest")})


def fields_of(entry: NewEntry) -> dict[str, Any]:
    """The hashed fields of an entry, as stored (the same names as the journal table's columns)."""
    return {
        "kind": entry.kind,
        "worker": entry.worker,
        "amount": entry.amount,
        "job_id": entry.job_id,
        "stage": entry.stage,
        "work_units": entry.work_units,
        "evidence_hash": entry.evidence_hash,
        "epoch": entry.epoch,
        "ref": entry.ref,
        "data": entry.data,
    }


def canonical_bytes(fields: Mapping[str, Any], seq: int, at_ms: int) -> bytes:
    """The bytes an entry's hash commits to: every stored field but the hashes, exactly as stored (no
    normalisation here, so that `verify` notices a row edited into another spelling of the same value)."""
    body = {
        "v": ENCODING_VERSION,
        "seq": seq,
        "kind": fields["kind"],
        "worker": fields["worker"],
        "amount": str(fields["amount"]),
        "job_id": fields["job_id"],
        "stage": fields["stage"],
        "work_units": None if fields["work_units"] is None else str(fields["work_units"]),
        "evidence_hash": fields["evidence_hash"],
        "epoch": fields["epoch"],
        "ref": fields["ref"],
        "data": fields["data"],
        "at_ms": at_ms,
    }
    return _CANONICAL.encode(body).encode()


def hash_fields(fields: Mapping[str, Any], seq: int, at_ms: int, prev_hash: str) -> str:
    """keccak256(prev_hash || canonical_bytes(fields)) as 0x hex."""
    return "0x" + keccak(bytes.fromhex(prev_hash[2:]) + canonical_bytes(fields, seq, at_ms)).hex()


def chain(entries: list[NewEntry], *, head_seq: int, head_hash: str, at_ms: int) -> list[Entry]:
    """Give each new entry its position and hashes, continuing the chain from (head_seq, head_hash)."""
    out: list[Entry] = []
    prev = head_hash
    for offset, new in enumerate(entries, start=1):
        seq = head_seq + offset
        digest = hash_fields(fields_of(new), seq, at_ms, prev)
        # `new` was validated when it was built; copy its fields without validating them again.
        entry = object.__new__(Entry)
        entry.__dict__.update(new.__dict__, seq=seq, at_ms=at_ms, prev_hash=prev, entry_hash=digest)
        out.append(entry)
        prev = digest
    return out
_ENTRY_FIELDS = ("kind", "amount", "worker", "job_id", "stage", "work_units", "evidence_hash", "epoch", "ref", "data",
                 "seq", "at_ms", "prev_hash", "entry_hash")


def entry_from_row(row: Any) -> Entry:
    """An Entry from a journal row, as stored: not re-validated, so `verify` sees exactly what is there."""
    entry = object.__new__(Entry)
    entry.__dict__.update({name: getattr(row, name) for name in _ENTRY_FIELDS})
    return entry
