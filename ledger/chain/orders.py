"""Slash and anchor orders: the EIP-712 typed data a threshold of validators signs (PROTOCOL I7).

The staking contract executes a slash or an anchor only with `threshold` signatures of distinct validators
over the same typed order, in the domain {name "StagewiseStaking", version "1", chain id, contract}, so an
order signed for one contract or chain is worth nothing on another. Here: the orders as frozen values, their
EIP-712 digests (byte for byte what the contract hashes), signing one, recovering who signed one, and
packing signatures the way the contract reads them: 65 bytes each (r || s || v, v in {27, 28}, low s), in
strictly ascending order of the signers' addresses.

`deadline` (unix seconds of the chain) bounds how long a collected set of signatures stays usable; the
evidence hash (a slash) and the epoch number (an anchor) make each order single-use on chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import coincurve
from eth_abi import encode
from eth_hash.auto import keccak
from eth_utils import to_checksum_address

from ledger import json_input
from ledger.chain.keys import Signer, as_account
from ledger.errors import InvalidInput

SIGNATURE_LENGTH = 65
DOMAIN_NAME = "StagewiseStaking"
DOMAIN_VERSION = "1"
_DOMAIN_TYPEHASH = keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
SLASH_TYPEHASH = keccak(b"Slash(address worker,uint256 amount,bytes32 evidenceHash,uint256 deadline)")
ANCHOR_TYPEHASH = keccak(
    b"Anchor(uint256 epoch,bytes32 entriesRoot,bytes32 rewardsRoot,uint256 entryCount,uint256 deadline)"
)
_HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


class OrderSignatureError(InvalidInput):
    """A signature that is malformed, has a high s, or does not recover to a key."""


@dataclass(frozen=True)
class OrderDomain:
    """Where an order is valid: one contract on one chain."""

    chain_id: int
    contract: str

    @property
    def separator(self) -> bytes:
        return keccak(
            encode(
                ["bytes32", "bytes32", "bytes32", "uint256", "address"],
                [_DOMAIN_TYPEHASH, keccak(DOMAIN_NAME.encode()), keccak(DOMAIN_VERSION.encode()), self.chain_id,
                 to_checksum_address(self.contract)],
            )
        )


@dataclass(frozen=True)
class SlashOrder:
    """Take up to `amount` wei of `worker`'s stake for the evidence whose keccak256 is `evidence_hash`."""

    worker: str
    amount: int
    evidence_hash: bytes
    deadline: int

    kind = "slash"

    @property
    def key(self) -> str:
        return "0x" + self.evidence_hash.hex()

    def struct_hash(self) -> bytes:
        return keccak(
            encode(
                ["bytes32", "address", "uint256", "bytes32", "uint256"],
                [SLASH_TYPEHASH, to_checksum_address(self.worker), self.amount, self.evidence_hash, self.deadline],
            )
        )

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "worker": to_checksum_address(self.worker), "amount": str(self.amount),
                "evidence_hash": "0x" + self.evidence_hash.hex(), "deadline": self.deadline}


@dataclass(frozen=True)
class AnchorOrder:
    """Anchor ledger epoch `epoch` (exactly the one after the chain's latest) with these roots."""

    epoch: int
    entries_root: bytes
    rewards_root: bytes
    entry_count: int
    deadline: int

    kind = "anchor"

    @property
    def key(self) -> str:
        return str(self.epoch)

    def struct_hash(self) -> bytes:
        return keccak(
            encode(
                ["bytes32", "uint256", "bytes32", "bytes32", "uint256", "uint256"],
                [ANCHOR_TYPEHASH, self.epoch, self.entries_root, self.rewards_root, self.entry_count, self.deadline],
            )
        )

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "epoch": self.epoch, "entries_root": "0x" + self.entries_root.hex(),
                "rewards_root": "0x" + self.rewards_root.hex(), "entry_count": self.entry_count,
                "deadline": self.deadline}


Order = Union[SlashOrder, AnchorOrder]


def order_from_json(data: Any) -> Order:
    """An order from its JSON form (what `to_json` writes), every field checked."""
    if not isinstance(data, dict):
        raise InvalidInput("an order is a JSON object")
    kind = data.get("kind")
    deadline = _uint(data.get("deadline"), "deadline")
    if kind == "slash":
        return SlashOrder(
            worker=_address(data.get("worker"), "worker"),
            amount=_uint(data.get("amount"), "amount"),
            evidence_hash=json_input.hex_bytes(data.get("evidence_hash"), "evidence_hash", length=32),
            deadline=deadline,
        )
    if kind == "anchor":
        return AnchorOrder(
            epoch=_uint(data.get("epoch"), "epoch"),
            entries_root=json_input.hex_bytes(data.get("entries_root"), "entries_root", length=32),
            rewards_root=json_input.hex_bytes(data.get("rewards_root"), "rewards_root", length=32),
            entry_count=_uint(data.get("entry_count"), "entry_count"),
            deadline=deadline,
        )
    raise InvalidInput(f"unknown order kind {kind!r}")


def _uint(value: Any, what: str) -> int:
    """A uint256 from JSON: an integer, or its decimal digits as a string (wei amounts outgrow JSON numbers)."""
    if isinstance(value, str) and value.isdigit() and len(value) <= 78:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**256:
        raise InvalidInput(f"{what} must be an unsigned 256-bit integer")
    return value


def _address(value: Any, what: str) -> str:
    return to_checksum_address(json_input.hex_bytes(value, what, length=20, error=InvalidInput))


def digest(order: Order, domain: OrderDomain) -> bytes:
    """The EIP-712 digest the contract recovers each signer from."""
    return keccak(b"\x19\x01" + domain.separator + order.struct_hash())


def sign_order(key: Signer, order: Order, domain: OrderDomain) -> bytes:
    """This key's signature of `order` in `domain`: 65 bytes, low s (libsecp256k1 never gives a high one)."""
    secret = bytes(as_account(key).key)
    signature = coincurve.PrivateKey(secret).sign_recoverable(digest(order, domain), hasher=None)
    return signature[:64] + bytes([signature[64] + 27])


def signer_of(order: Order, domain: OrderDomain, signature: bytes) -> str:
    """The checksummed address whose key signed `order` in `domain`; OrderSignatureError when none does or the
    contract would refuse the signature (bad length or v, high s)."""
    if len(signature) != SIGNATURE_LENGTH or signature[64] not in (27, 28):
        raise OrderSignatureError("an order signature is 65 bytes r || s || v with v 27 or 28")
    if int.from_bytes(signature[32:64], "big") > _HALF_ORDER:
        raise OrderSignatureError("an order signature must have a low s (EIP-2)")
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([signature[64] - 27]), digest(order, domain), hasher=None
        )
    except Exception:  # noqa: BLE001 - coincurve raises plain Exceptions for points off the curve
        raise OrderSignatureError("the order signature recovers to no key") from None
    return to_checksum_address(keccak(public.format(compressed=False)[1:])[-20:])


def pack_signatures(signatures: Mapping[str, bytes]) -> bytes:
    """Signatures by signer address, concatenated in ascending address order: what `slash` and `anchor` take."""
    ordered = sorted(signatures.items(), key=lambda item: int(item[0], 16))
    for address, signature in ordered:
        if len(signature) != SIGNATURE_LENGTH:
            raise OrderSignatureError(f"the signature of {address} is not {SIGNATURE_LENGTH} bytes")
    return b"".join(signature for _, signature in ordered)
