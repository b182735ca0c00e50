"""What a worker tells the orchestrator: a signed registration and signed heartbeats.

Both are small frozen values with one canonical encoding (compact JSON, sorted keys, a `kind` and a
`version`), signed with the worker's key under EIP-191. The orchestrator trusts nothing in them but what the
signature binds: the address must be the signer, and a fresh nonce plus a timestamp close to the validator's
clock make a captured message worthless later (replay). `parse_signed_registration` and
`parse_signed_heartbeat` are the only way untrusted JSON becomes one of these values; every wrong field
raises `MessageError` with a message that names it.

A third message, `Leave`, says a worker is shutting down: the orchestrator takes it out of its group at once
(repairing the group with a spare) instead of finding out from failed jobs or missed heartbeats.

Wire form (HTTP body of POST /v1/workers/register, /v1/workers/heartbeat and /v1/workers/leave):
    {"message": {...the canonical fields...}, "signature": "0x<65 bytes hex>"}
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import urlparse

from eth_utils import is_address, to_checksum_address

from node.protocol.signing import SignatureError, SigningKey, recover_message

MESSAGE_VERSION = 1
REGISTRATION_KIND = "stagewise/register"
HEARTBEAT_KIND = "stagewise/heartbeat"
LEAVE_KIND = "stagewise/leave"
NONCE_BYTES = 16
UNBOUND_VALIDATOR = "0x" + "00" * 20  # a registration that names no validator: a bound registry refuses it
MAX_REGION_LENGTH = 64
MAX_URL_LENGTH = 512
_REGION = re.compile(r"^[A-Za-z0-9._-]+$")


class MessageError(ValueError):
    """An untrusted message that is malformed or not signed by the address it names."""


@dataclass(frozen=True)
class Capacity:
    """What a worker can hold and how fast it computes.

    `memory_bytes` is the memory it offers for weights (and KV cache); `layer_tokens_per_s` is a measured
    forward throughput in layer-tokens per second (one layer applied to one token), so a stage of L layers
    serving T tokens takes about L*T/layer_tokens_per_s seconds, whatever the model.
    """

    memory_bytes: int
    layer_tokens_per_s: float

    def __post_init__(self) -> None:
        if not (_is_int(self.memory_bytes) and 0 < self.memory_bytes < 1 << 60):
            raise MessageError("capacity.memory_bytes must be a positive integer")
        value = self.layer_tokens_per_s
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
            raise MessageError("capacity.layer_tokens_per_s must be a positive finite number")
        object.__setattr__(self, "layer_tokens_per_s", float(value))


class WorkerMessage:
    """What the three messages share: a kind, one canonical encoding, and an EIP-191 signature over it."""

    KIND: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, "version": MESSAGE_VERSION, **asdict(self)}

    def canonical_bytes(self) -> bytes:
        return _canonical(self.to_dict())

    def sign(self, key: SigningKey) -> "Signed[Any]":
        return Signed(self, key.sign_message(self.canonical_bytes()))


@dataclass(frozen=True)
class Registration(WorkerMessage):
    """A worker offers itself: who it is, what it can do, where it is and where its stage server listens."""

    KIND: ClassVar[str] = REGISTRATION_KIND

    address: str
    capacity: Capacity
    region: str
    stage_url: str
    nonce: str
    timestamp: int
    validator: str = UNBOUND_VALIDATOR  # the validator (and chain) it is for: a copy is worthless to another
    chain_id: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _checked_address(self.address))
        object.__setattr__(self, "validator", _checked_address(self.validator))
        if not (_is_int(self.chain_id) and 0 <= self.chain_id < 1 << 64):
            raise MessageError("chain_id must be a non-negative integer")
        if not isinstance(self.capacity, Capacity):
            raise MessageError("capacity must be an object with memory_bytes and layer_tokens_per_s")
        if not (isinstance(self.region, str) and 0 < len(self.region) <= MAX_REGION_LENGTH and _REGION.match(self.region)):
            raise MessageError(f"region must be 1..{MAX_REGION_LENGTH} characters of letters, digits, '.', '_' or '-'")
        object.__setattr__(self, "stage_url", _checked_url(self.stage_url))
        _check_nonce(self.nonce)
        _check_timestamp(self.timestamp)


@dataclass(frozen=True)
class Heartbeat(WorkerMessage):
    """A worker is alive. `in_flight` is how many sequences its stage holds now (informational)."""

    KIND: ClassVar[str] = HEARTBEAT_KIND

    address: str
    nonce: str
    timestamp: int
    in_flight: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _checked_address(self.address))
        _check_nonce(self.nonce)
        _check_timestamp(self.timestamp)
        if not (_is_int(self.in_flight) and 0 <= self.in_flight < 1 << 31):
            raise MessageError("in_flight must be a non-negative integer")


@dataclass(frozen=True)
class Leave(WorkerMessage):
    """A worker is shutting down: stop giving its group work, repair the group now."""

    KIND: ClassVar[str] = LEAVE_KIND

    address: str
    nonce: str
    timestamp: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _checked_address(self.address))
        _check_nonce(self.nonce)
        _check_timestamp(self.timestamp)


M = TypeVar("M")  # Registration, Heartbeat or Leave


@dataclass(frozen=True)
class Signed(Generic[M]):
    """A worker message and its signer's EIP-191 signature over the message's canonical bytes."""

    message: M
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message.to_dict(), "signature": "0x" + self.signature.hex()}

    def verify(self) -> None:
        """Raise MessageError unless the signature recovers to the address the message names."""
        _verify(self.message.canonical_bytes(), self.signature, self.message.address)


SignedRegistration = Signed[Registration]
SignedHeartbeat = Signed[Heartbeat]
SignedLeave = Signed[Leave]


def new_nonce() -> str:
    """A fresh random nonce (CSPRNG), hex."""
    return "0x" + os.urandom(NONCE_BYTES).hex()


def make_registration(
    key: SigningKey, capacity: Capacity, region: str, stage_url: str, now: float | None = None, *,
    validator: str = UNBOUND_VALIDATOR, chain_id: int = 0,
) -> SignedRegistration:
    """What a worker sends to POST /v1/workers/register, for the validator `validator` on chain `chain_id`."""
    timestamp = int(time.time() if now is None else now)
    return Registration(key.address, capacity, region, stage_url, new_nonce(), timestamp, validator, chain_id).sign(key)


def make_heartbeat(key: SigningKey, in_flight: int = 0, now: float | None = None) -> SignedHeartbeat:
    """What a worker sends to POST /v1/workers/heartbeat."""
    timestamp = int(time.time() if now is None else now)
    return Heartbeat(key.address, new_nonce(), timestamp, in_flight).sign(key)


def make_leave(key: SigningKey, now: float | None = None) -> SignedLeave:
    """What a worker sends to POST /v1/workers/leave when it starts shutting down."""
    timestamp = int(time.time() if now is None else now)
    return Leave(key.address, new_nonce(), timestamp).sign(key)


def parse_signed_registration(data: Any) -> SignedRegistration:
    """Untrusted JSON -> a registration whose signature recovers to its address, or MessageError."""
    body, signature = _envelope(data, REGISTRATION_KIND)
    _check_keys("message", body, {f.name for f in fields(Registration)})
    capacity = body["capacity"]
    if not isinstance(capacity, dict):
        raise MessageError("capacity must be an object with memory_bytes and layer_tokens_per_s")
    _check_keys("capacity", capacity, {f.name for f in fields(Capacity)})
    signed = SignedRegistration(Registration(**{**body, "capacity": Capacity(**capacity)}), signature)
    signed.verify()
    return signed


def parse_signed_heartbeat(data: Any) -> SignedHeartbeat:
    """Untrusted JSON -> a heartbeat whose signature recovers to its address, or MessageError."""
    body, signature = _envelope(data, HEARTBEAT_KIND)
    _check_keys("message", body, {f.name for f in fields(Heartbeat)}, optional={"in_flight"})
    signed = SignedHeartbeat(Heartbeat(**body), signature)
    signed.verify()
    return signed


def _envelope(data: Any, kind: str) -> tuple[dict[str, Any], bytes]:
    if not isinstance(data, dict):
        raise MessageError("the body must be a JSON object {message, signature}")
    _check_keys("body", data, {"message", "signature"})
    body = data["message"]
    if not isinstance(body, dict):
        raise MessageError("message must be an object")
    body = dict(body)
    if body.pop("kind", None) != kind:
        raise MessageError(f"message.kind must be {kind!r}")
    version = body.pop("version", None)
    if version != MESSAGE_VERSION:
        raise MessageError(f"unsupported message version {version!r} (this validator speaks {MESSAGE_VERSION})")
    signature = data["signature"]
    if not (isinstance(signature, str) and signature.startswith("0x")):
        raise MessageError("signature must be a 0x-prefixed hex string")
    try:
        raw = bytes.fromhex(signature[2:])
    except ValueError as error:
        raise MessageError("signature is not hex") from error
    if len(raw) != 65:
        raise MessageError(f"signature must be 65 bytes, got {len(raw)}")
    return body, raw


def _verify(message: bytes, signature: bytes, address: str) -> None:
    try:
        signer = recover_message(message, signature)
    except SignatureError as error:
        raise MessageError(f"bad signature: {error}") from error
    if signer != address:
        raise MessageError(f"signature is by {signer}, not by {address}")


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _checked_address(value: Any) -> str:
    if not (isinstance(value, str) and is_address(value)):
        raise MessageError(f"address {value!r} is not an Ethereum address")
    return to_checksum_address(value)


def _checked_url(value: Any) -> str:
    if not (isinstance(value, str) and 0 < len(value) <= MAX_URL_LENGTH):
        raise MessageError(f"stage_url must be a string of at most {MAX_URL_LENGTH} characters")
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise MessageError(f"stage_url {value!r} must be an http(s) URL with a host")
    try:
        parsed.port  # noqa: B018 - raises on a port that is not one
    except ValueError:
        raise MessageError(f"stage_url {value!r} has no valid port") from None
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.params or "@" in parsed.netloc:
        # the validator signs PUT/DELETE requests to it: only the server's root, never a path chosen by the worker
        raise MessageError(f"stage_url {value!r} must be scheme://host:port only (no user, path, query or fragment)")
    return f"{parsed.scheme}://{parsed.netloc}"


def _check_nonce(value: Any) -> None:
    if not (isinstance(value, str) and re.fullmatch(r"0x[0-9a-f]{16,64}", value)):
        raise MessageError("nonce must be 0x followed by 16..64 lowercase hex digits")


def _check_timestamp(value: Any) -> None:
    if not (_is_int(value) and 0 < value < 1 << 40):
        raise MessageError("timestamp must be a positive integer (unix seconds)")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(where: str, data: dict, allowed: set[str], optional: set[str] = frozenset()) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise MessageError(f"{where}: unknown field(s) {sorted(unknown)}")
    missing = allowed - optional - set(data)
    if missing:
        raise MessageError(f"{where}: missing field(s) {sorted(missing)}")


def parse_signed_leave(data: Any) -> SignedLeave:
    """Untrusted JSON -> a leave message whose signature recovers to its address, or MessageError."""
    body, signature = _envelope(data, LEAVE_KIND)
    _check_keys("message", body, {f.name for f in fields(Leave)})
    signed = SignedLeave(Leave(**body), signature)
    signed.verify()
    return signed
