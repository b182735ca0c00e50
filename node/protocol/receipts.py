"""The signed receipt of one stage of one job: EIP-712 typed data, bound to one chain and one contract.

A receipt says "key K computed stage s of job J: these layers of this model, over these tokens, and these
are the proofs of what it sent". It is EIP-712 typed data so that any Ethereum wallet or contract can show
and check it, and the domain (chain id, staking contract) keeps a receipt for one deployment from being
replayed on another. PROTOCOL I3: a receipt binds one key to one job's stage.

The struct hash is computed by hand (fixed 32-byte words, keccak), which is what EIP-712 specifies for
these static types; a test checks it against eth-account's generic encoder, which is ~50x slower. A
validator recovers every signature of every bundle, so this path matters.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Annotated, Any, Iterable, Sequence

from pydantic import Field, Strict

from ledger import json_input
from ledger.errors import InvalidInput
from node.protocol.job import JobSpec
from node.protocol.precision import DEFAULT_PRECISION, check_precision
from node.protocol.signing import SigningKey
from node.protocol.signing import keccak256 as keccak
from node.protocol.signing import recover_digest
from node.protocol.wire_types import address, validated_dataclass

DOMAIN_NAME = "stagewise"
DOMAIN_VERSION = "1"
ZERO_DIGEST = b"\x00" * 32
MAX_UINT32 = 2**32 - 1
MAX_UINT64 = 2**64 - 1

DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
RECEIPT_TYPE = (
    "StageReceipt(bytes32 jobId,string groupId,uint32 stageIndex,uint32 layerStart,uint32 layerEnd,"
    "bytes32 modelId,bytes32 proofsDigest,bytes32 tokensDigest,bytes32 inputsDigest,uint64 tokenCount,"
    "uint64 workUnits,string precision)"
)
DOMAIN_TYPEHASH = keccak(DOMAIN_TYPE.encode())
RECEIPT_TYPEHASH = keccak(RECEIPT_TYPE.encode())

# The same types in the JSON form wallets and eth_account.messages.encode_typed_data take.
EIP712_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "StageReceipt": [
        {"name": "jobId", "type": "bytes32"},
        {"name": "groupId", "type": "string"},
        {"name": "stageIndex", "type": "uint32"},
        {"name": "layerStart", "type": "uint32"},
        {"name": "layerEnd", "type": "uint32"},
        {"name": "modelId", "type": "bytes32"},
        {"name": "proofsDigest", "type": "bytes32"},
        {"name": "tokensDigest", "type": "bytes32"},
        {"name": "inputsDigest", "type": "bytes32"},
        {"name": "tokenCount", "type": "uint64"},
        {"name": "workUnits", "type": "uint64"},
        {"name": "precision", "type": "string"},
    ],
}


class ReceiptError(InvalidInput):
    """A receipt field of the wrong type or out of range; the message names it."""


ContractAddress = address("domain verifying_contract")


@validated_dataclass(ReceiptError)
class ReceiptDomain:
    """Which deployment a receipt is for: the chain and the staking contract (the EIP-712 domain)."""

    chain_id: Annotated[int, Strict(), Field(gt=0, le=2**256 - 1)]
    verifying_contract: ContractAddress
    name: Annotated[str, Strict()] = DOMAIN_NAME
    version: Annotated[str, Strict()] = DOMAIN_VERSION

    @cached_property
    def separator(self) -> bytes:
        """The EIP-712 domain separator (32 bytes), computed once: every receipt digest of this deployment
        starts from it."""
        return keccak(
            DOMAIN_TYPEHASH
            + keccak(self.name.encode())
            + keccak(self.version.encode())
            + self.chain_id.to_bytes(32, "big")
            + bytes(12)
            + bytes.fromhex(self.verifying_contract[2:])
        )

    def to_eip712(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "chainId": self.chain_id,
            "verifyingContract": self.verifying_contract,
        }


@dataclass(frozen=True)
class StageReceipt:
    """What stage `stage_index` of job `job_id` signs when the job ends (field meanings: PROTOCOL.md)."""

    job_id: bytes
    group_id: str
    stage_index: int
    layer_start: int
    layer_end: int
    model_id: bytes
    proofs_digest: bytes
    tokens_digest: bytes
    inputs_digest: bytes  # proofs_digest of the handoff proofs this stage received (zero on stage 0), I2
    token_count: int
    work_units: int
    precision: str = DEFAULT_PRECISION  # what the stage computed in, the job's declared precision (I8)

    def __post_init__(self) -> None:
        for name in ("job_id", "model_id", "proofs_digest", "tokens_digest", "inputs_digest"):
            value = getattr(self, name)
            if not (isinstance(value, bytes) and len(value) == 32):
                raise ReceiptError(f"receipt {name} must be 32 bytes")
        if not (isinstance(self.group_id, str) and 0 < len(self.group_id) <= 128):
            raise ReceiptError("receipt group_id must be a non-empty string of at most 128 characters")
        for name in ("stage_index", "layer_start", "layer_end"):
            if not _is_uint(getattr(self, name), MAX_UINT32):
                raise ReceiptError(f"receipt {name} must be an integer in [0, 2**32)")
        for name in ("token_count", "work_units"):
            if not _is_uint(getattr(self, name), MAX_UINT64):
                raise ReceiptError(f"receipt {name} must be an integer in [0, 2**64)")
        if self.layer_start >= self.layer_end:
            raise ReceiptError("receipt layer range must be non-empty")
        try:
            check_precision(self.precision, "receipt precision")
        except ValueError as wrong:
            raise ReceiptError(str(wrong)) from None

    def struct_hash(self) -> bytes:
        return keccak(
            RECEIPT_TYPEHASH
            + self.job_id
            + keccak(self.group_id.encode())
            + self.stage_index.to_bytes(32, "big")
            + self.layer_start.to_bytes(32, "big")
            + self.layer_end.to_bytes(32, "big")
            + self.model_id
            + self.proofs_digest
            + self.tokens_digest
            + self.inputs_digest
            + self.token_count.to_bytes(32, "big")
            + self.work_units.to_bytes(32, "big")
            + keccak(self.precision.encode())
        )

    def digest(self, domain: ReceiptDomain) -> bytes:
        """The EIP-712 digest: keccak256(0x1901 || domainSeparator || structHash)."""
        return keccak(b"\x19\x01" + domain.separator + self.struct_hash())

    def to_eip712_message(self) -> dict[str, Any]:
        return {
            "jobId": self.job_id,
            "groupId": self.group_id,
            "stageIndex": self.stage_index,
            "layerStart": self.layer_start,
            "layerEnd": self.layer_end,
            "modelId": self.model_id,
            "proofsDigest": self.proofs_digest,
            "tokensDigest": self.tokens_digest,
            "inputsDigest": self.inputs_digest,
            "tokenCount": self.token_count,
            "workUnits": self.work_units,
            "precision": self.precision,
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: bytes as 0x-hex, integers as numbers."""
        return {
            f.name: ("0x" + value.hex()) if isinstance(value := getattr(self, f.name), bytes) else value
            for f in fields(self)
        }

    @classmethod
    def from_json(cls, data: Any) -> "StageReceipt":
        """Parse untrusted JSON: unknown or missing fields and wrong types raise ReceiptError."""
        if not isinstance(data, dict):
            raise ReceiptError("a receipt is a JSON object")
        names = _RECEIPT_FIELDS
        unknown = data.keys() - names
        if unknown:
            raise ReceiptError(f"receipt: unknown field(s) {sorted(unknown)}")
        missing = names - data.keys()
        if missing:
            raise ReceiptError(f"receipt: missing field(s) {sorted(missing)}")
        values = dict(data)
        for name in ("job_id", "model_id", "proofs_digest", "tokens_digest", "inputs_digest"):
            values[name] = parse_hex(values[name], f"receipt {name}", length=32)
        return cls(**values)


_RECEIPT_FIELDS = frozenset(f.name for f in fields(StageReceipt))


def sign_receipt(key: SigningKey, receipt: StageReceipt, domain: ReceiptDomain) -> bytes:
    """The 65-byte signature `r || s || v` of the receipt's EIP-712 digest."""
    return key.sign_digest(receipt.digest(domain))


def recover_receipt_signer(receipt: StageReceipt, signature: bytes, domain: ReceiptDomain) -> str:
    """The checksummed address that signed this receipt for this domain (SignatureError if none)."""
    return recover_digest(receipt.digest(domain), signature)


def proofs_digest(proofs: Iterable[bytes]) -> bytes:
    """keccak256 of the proofs concatenated in order (each TOPLOC proof has a fixed length)."""
    return keccak(b"".join(proofs))


def tokens_digest(token_ids: Sequence[int]) -> bytes:
    """keccak256 of the token ids as uint32 big-endian words."""
    try:
        return keccak(struct.pack(f">{len(token_ids)}I", *token_ids))
    except struct.error:
        raise ReceiptError("token ids must be integers in [0, 2**32)") from None


def stage_tokens(spec: JobSpec, stage_index: int, output_token_ids: Sequence[int]) -> tuple[int, ...] | None:
    """The tokens a stage answers for: the prompt it embedded (stage 0), the output it sampled (the last
    stage), both for a single-stage group, none (None) for a middle stage."""
    first, last = stage_index == 0, stage_index == len(spec.stages) - 1
    if first and last:
        return tuple(spec.prompt_token_ids) + tuple(output_token_ids)
    if first:
        return tuple(spec.prompt_token_ids)
    if last:
        return tuple(output_token_ids)
    return None


def processed_token_count(spec: JobSpec, output_token_ids: Sequence[int]) -> int:
    """Positions every stage runs: the prompt in the prefill, then each generated token but the last, which
    is never fed back (the proof schedule in INTERFACES.md)."""
    return len(spec.prompt_token_ids) + max(len(output_token_ids) - 1, 0)


def expected_receipt(
    spec: JobSpec,
    stage_index: int,
    output_token_ids: Sequence[int],
    proofs: Iterable[bytes],
    *,
    received_proofs: Iterable[bytes] | None = None,
    inputs_digest: bytes | None = None,
    job_id: bytes | None = None,
) -> StageReceipt:
    """The one receipt an honest stage `stage_index` signs for this job, output and proofs.

    The worker builds its receipt with this; the validator compares every submitted receipt with it, so
    both sides derive each field the same way. A receiving stage names the handoff proofs it received
    (`received_proofs`, or their digest as `inputs_digest` where only that is known, as at the validator);
    stage 0 received none and names the zero digest. `job_id` may be passed when already known (it is
    spec.job_id; computing it encodes the whole spec).
    """
    if not 0 <= stage_index < len(spec.stages):
        raise ReceiptError(f"stage index {stage_index} out of range for a {len(spec.stages)}-stage job")
    stage = spec.stages[stage_index]
    if stage_index == 0:
        inputs_digest = ZERO_DIGEST
    elif inputs_digest is None:
        if received_proofs is None:
            raise ReceiptError(f"stage {stage_index} receives handoffs: name the proofs it received")
        inputs_digest = proofs_digest(received_proofs)
    tokens = stage_tokens(spec, stage_index, output_token_ids)
    token_count = processed_token_count(spec, output_token_ids)
    return StageReceipt(
        job_id=spec.job_id if job_id is None else job_id,
        group_id=spec.group_id,
        stage_index=stage_index,
        layer_start=stage.layer_start,
        layer_end=stage.layer_end,
        model_id=bytes.fromhex(spec.model_id[2:]),
        proofs_digest=proofs_digest(proofs),
        tokens_digest=ZERO_DIGEST if tokens is None else tokens_digest(tokens),
        inputs_digest=inputs_digest,
        token_count=token_count,
        work_units=stage.num_layers * token_count,
        precision=spec.precision,
    )


def parse_hex(value: Any, what: str, length: int | None = None, max_length: int | None = None) -> bytes:
    """Bytes from a 0x-prefixed hex string of untrusted origin; ReceiptError naming `what` otherwise."""
    return json_input.hex_bytes(value, what, length=length, max_length=max_length, error=ReceiptError)


def _is_uint(value: Any, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum
