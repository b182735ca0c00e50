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
declared once as the validated models `RegistrationBody`, `HeartbeatBody` and `LeaveBody` (their fields'
rules are the messages' own, node/protocol/wire_types.py), which /openapi.json shows as they are.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, ClassVar, Generic, TypeVar
from urllib.parse import urlparse

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, WithJsonSchema, create_model

from ledger import json_input
from ledger.errors import InvalidInput
from node.protocol.precision import DEFAULT_PRECISION, Precision
from node.protocol.signing import SignatureError, SigningKey, recover_message
from node.protocol.wire_types import Address, address, parse, validated_dataclass

MESSAGE_VERSION = 1
REGISTRATION_KIND = "stagewise/register"
HEARTBEAT_KIND = "stagewise/heartbeat"
LEAVE_KIND = "stagewise/leave"
NONCE_BYTES = 16
UNBOUND_VALIDATOR = "0x" + "00" * 20  # a registration that names no validator: a bound registry refuses it
MAX_REGION_LENGTH = 64
MAX_URL_LENGTH = 512
SIGNATURE_BYTES = 65


class MessageError(InvalidInput):
    """An untrusted message that is malformed or not signed by the address it names."""


def _checked_url(value: str) -> str:
    if not 0 < len(value) <= MAX_URL_LENGTH:
        raise ValueError(f"stage_url must be a string of at most {MAX_URL_LENGTH} characters")
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"stage_url {value!r} must be an http(s) URL with a host")
    try:
        parsed.port  # noqa: B018 - raises on a port that is not one
    except ValueError:
        raise ValueError(f"stage_url {value!r} has no valid port") from None
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.params or "@" in parsed.netloc:
        # the validator signs PUT/DELETE requests to it: only the server's root, never a path chosen by the worker
        raise ValueError(f"stage_url {value!r} must be scheme://host:port only (no user, path, query or fragment)")
    return f"{parsed.scheme}://{parsed.netloc}"


ValidatorAddress = address("validator")
Nonce = Annotated[str, Strict(), Field(pattern=r"^0x[0-9a-f]{16,64}$")]
Timestamp = Annotated[int, Strict(), Field(gt=0, lt=1 << 40, description="unix seconds")]
Region = Annotated[str, Strict(), Field(min_length=1, max_length=MAX_REGION_LENGTH, pattern=r"^[A-Za-z0-9._-]+$")]
Device = Annotated[str, Strict(), Field(min_length=1, max_length=32, pattern=r"^[a-z]+(:[0-9]+)?$")]
Precisions = Annotated[tuple[Precision, ...], Field(min_length=1, max_length=8)]
ModelId = Annotated[str, Strict(), Field(pattern=r"^0x[0-9a-f]{64}$", description="keccak256 of the weight manifest")]
CPU_ONLY = ("cpu", (DEFAULT_PRECISION,))  # what a registration that names neither means (workers from before I8)
StageUrl = Annotated[
    str, Strict(), AfterValidator(_checked_url), WithJsonSchema({"type": "string", "maxLength": MAX_URL_LENGTH})
]


@validated_dataclass(MessageError)
class Capacity:
    """What a worker can hold and how fast it computes.

    `memory_bytes` is the memory it offers for weights (and KV cache); `layer_tokens_per_s` is a measured
    forward throughput in layer-tokens per second (one layer applied to one token), so a stage of L layers
    serving T tokens takes about L*T/layer_tokens_per_s seconds, whatever the model.
    """

    memory_bytes: Annotated[int, Strict(), Field(gt=0, lt=1 << 60)]
    layer_tokens_per_s: Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]


class WorkerMessage:
    """What the three messages share: a kind, one canonical encoding, and an EIP-191 signature over it."""

    KIND: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.KIND, "version": MESSAGE_VERSION, **asdict(self)}

    def canonical_bytes(self) -> bytes:
        return _canonical(self.to_dict())

    def sign(self, key: SigningKey) -> "Signed[Any]":
        return Signed(self, key.sign_message(self.canonical_bytes()))


@validated_dataclass(MessageError)
class Registration(WorkerMessage):
    """A worker offers itself: who it is, what it can do, where it is and where its stage server listens."""

    KIND: ClassVar[str] = REGISTRATION_KIND

    address: Address
    capacity: Capacity
    region: Region
    stage_url: StageUrl
    nonce: Nonce
    timestamp: Timestamp
    validator: ValidatorAddress = UNBOUND_VALIDATOR  # the validator (and chain) it is for: a copy is worthless to another
    chain_id: Annotated[int, Strict(), Field(ge=0, lt=1 << 64)] = 0
    device: Device = CPU_ONLY[0]  # the torch device its stage computes on (cpu, cuda, cuda:1, ...)
    precisions: Precisions = CPU_ONLY[1]  # what that device computes: the validator groups it only for these (I8)
    model_id: ModelId | None = None  # the model its stage serves: a validator of several models groups it for that
    # one; None (workers from before) means the validator's first model

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if (self.device, tuple(self.precisions)) == CPU_ONLY:  # the encoding workers signed before I8
            del data["device"], data["precisions"]
        else:
            data["precisions"] = list(self.precisions)
        if self.model_id is None:  # the encoding workers signed before they named their model
            del data["model_id"]
        return data


@validated_dataclass(MessageError)
class Heartbeat(WorkerMessage):
    """A worker is alive. `in_flight` is how many sequences its stage holds now (informational)."""

    KIND: ClassVar[str] = HEARTBEAT_KIND

    address: Address
    nonce: Nonce
    timestamp: Timestamp
    in_flight: Annotated[int, Strict(), Field(ge=0, lt=1 << 31)] = 0



@validated_dataclass(MessageError)
class Leave(WorkerMessage):
    """A worker is shutting down: stop giving its group work, repair the group now."""

    KIND: ClassVar[str] = LEAVE_KIND

    address: Address
    nonce: Nonce
    timestamp: Timestamp



M = TypeVar("M")  # Registration, Heartbeat or Leave


@dataclass(frozen=True)
class Signed(Generic[M]):
    """A worker message and its signer's EIP-191 signature over the message's canonical bytes."""

    message: M
    signature: bytes
    # both fields are frozen, so one successful recovery holds for the object's life: parsing verifies, and
    # the registry's own verify() of the same object (it also takes objects built in process) costs nothing
    _verified: bool = field(default=False, init=False, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message.to_dict(), "signature": "0x" + self.signature.hex()}

    def verify(self) -> None:
        """Raise MessageError unless the signature recovers to the address the message names."""
        if self._verified:
            return
        _verify(self.message.canonical_bytes(), self.signature, self.message.address)
        object.__setattr__(self, "_verified", True)


SignedRegistration = Signed[Registration]
SignedHeartbeat = Signed[Heartbeat]
SignedLeave = Signed[Leave]


def new_nonce() -> str:
    """A fresh random nonce (CSPRNG), hex."""
    return "0x" + os.urandom(NONCE_BYTES).hex()


def make_registration(
    key: SigningKey, capacity: Capacity, region: str, stage_url: str, now: float | None = None, *,
    validator: str = UNBOUND_VALIDATOR, chain_id: int = 0, device: str = CPU_ONLY[0],
    precisions: tuple[str, ...] = CPU_ONLY[1], model_id: str | None = None,
) -> SignedRegistration:
    """What a worker sends to POST /v1/workers/register, for the validator `validator` on chain `chain_id`:
    its stage computes on `device` in any of `precisions`, and serves the model `model_id`."""
    timestamp = int(time.time() if now is None else now)
    return Registration(key.address, capacity, region, stage_url, new_nonce(), timestamp, validator, chain_id,
                        device, tuple(precisions), model_id).sign(key)


def make_heartbeat(key: SigningKey, in_flight: int = 0, now: float | None = None) -> SignedHeartbeat:
    """What a worker sends to POST /v1/workers/heartbeat."""
    timestamp = int(time.time() if now is None else now)
    return Heartbeat(key.address, new_nonce(), timestamp, in_flight).sign(key)


def make_leave(key: SigningKey, now: float | None = None) -> SignedLeave:
    """What a worker sends to POST /v1/workers/leave when it starts shutting down."""
    timestamp = int(time.time() if now is None else now)
    return Leave(key.address, new_nonce(), timestamp).sign(key)


def _signature(value: Any) -> Any:
    return json_input.hex_bytes(value, "signature", length=SIGNATURE_BYTES, error=ValueError)


Signature = Annotated[
    bytes, BeforeValidator(_signature), WithJsonSchema({"type": "string", "pattern": f"^0x[0-9a-fA-F]{{{2 * SIGNATURE_BYTES}}}$"})
]


class _Kind:
    """The `kind` and `version` every message carries on the wire: checked and dropped before its fields are
    validated, and declared in its schema."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, body: Any) -> Any:
        if not isinstance(body, dict):
            return body  # the dataclass says what is wrong with it
        body = dict(body)
        if body.pop("kind", None) != self.kind:
            raise ValueError(f"message.kind must be {self.kind!r}")
        version = body.pop("version", None)
        if version != MESSAGE_VERSION:
            raise ValueError(f"unsupported message version {version!r} (this validator speaks {MESSAGE_VERSION})")
        return body

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler.resolve_ref_schema(handler(core_schema))
        schema["properties"] = {"kind": {"const": self.kind}, "version": {"const": MESSAGE_VERSION}, **schema["properties"]}
        schema["required"] = ["kind", "version", *schema.get("required", [])]
        return schema


def _body(name: str, message: type) -> type[BaseModel]:
    """The wire form {message, signature} of one kind of message, as a validated model."""
    kind = _Kind(message.KIND)
    return create_model(
        name,
        __config__=ConfigDict(extra="forbid"),
        __doc__=f"A signed {message.__name__}: the message's canonical fields and its signer's EIP-191 signature.",
        message=(Annotated[message, BeforeValidator(kind), kind], ...),
        signature=(Signature, ...),
    )


RegistrationBody = _body("SignedRegistration", Registration)
HeartbeatBody = _body("SignedHeartbeat", Heartbeat)
LeaveBody = _body("SignedLeave", Leave)


def _parse_signed(body_type: type[BaseModel], data: Any) -> Signed[Any]:
    if not isinstance(data, dict):
        raise MessageError("the body must be a JSON object {message, signature}")
    body = parse(body_type, data, MessageError)
    signed = Signed(body.message, body.signature)
    signed.verify()
    return signed


def parse_signed_registration(data: Any) -> SignedRegistration:
    """Untrusted JSON -> a registration whose signature recovers to its address, or MessageError."""
    return _parse_signed(RegistrationBody, data)


def parse_signed_heartbeat(data: Any) -> SignedHeartbeat:
    """Untrusted JSON -> a heartbeat whose signature recovers to its address, or MessageError."""
    return _parse_signed(HeartbeatBody, data)


def parse_signed_leave(data: Any) -> SignedLeave:
    """Untrusted JSON -> a leave message whose signature recovers to its address, or MessageError."""
    return _parse_signed(LeaveBody, data)


def _verify(message: bytes, signature: bytes, address: str) -> None:
    try:
        signer = recover_message(message, signature)
    except SignatureError as error:
        raise MessageError(f"bad signature: {error}") from error
    if signer != address:
        raise MessageError(f"signature is by {signer}, not by {address}")


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
