"""The signed parts of the handoff between stages (PROTOCOL I2), as byte strings and small frozen values.

- A link opens with a challenge-response hello: the responder sends a fresh nonce, the caller signs
  (group, its stage index, its address, the responder's address, its own fresh nonce, the challenge), and the
  responder answers with the same over the caller's nonce. Each side checks the other is the neighbour its
  assignment names; a recorded hello is useless on a new connection.
- Every completed proof chunk is signed by the stage that sent the activations: `proof_message` binds
  job id, stage index, chunk index and the proof bytes. The receiver rebuilds the proof from what it
  received; when the two differ it signs a `Complaint` naming the sender.
- The last stage signs every token frame it sends to stage 0 (`tokens_message`); stage 0 checks the
  signature before it embeds a token.

All signatures are EIP-191 messages (node/signing.py), with a distinct prefix per kind so one can never be
replayed as another.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from eth_hash.auto import keccak

from node.signing import SigningKey, recover_message

HELLO_PREFIX = b"stagewise/link-hello/v1"
PROOF_PREFIX = b"stagewise/handoff-proof/v1"
TOKENS_PREFIX = b"stagewise/tokens/v1"
COMPLAINT_PREFIX = b"stagewise/handoff-complaint/v1"


def hello_message(group_id: str, stage_index: int, address: str, peer: str, nonce: bytes, challenge: bytes) -> bytes:
    body = {"group": group_id, "stage": stage_index, "address": address, "peer": peer,
            "nonce": nonce.hex(), "challenge": challenge.hex()}
    return HELLO_PREFIX + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def proof_message(job_id: bytes, stage_index: int, chunk_index: int, proof: bytes) -> bytes:
    """What a sender signs for each chunk proof it hands over (the validator can check it the same way)."""
    return PROOF_PREFIX + job_id + stage_index.to_bytes(4, "big") + chunk_index.to_bytes(4, "big") + proof


def sign_proof(key: SigningKey, job_id: bytes, stage_index: int, chunk_index: int, proof: bytes) -> bytes:
    return key.sign_message(proof_message(job_id, stage_index, chunk_index, proof))


def proof_signer(job_id: bytes, stage_index: int, chunk_index: int, proof: bytes, signature: bytes) -> str:
    return recover_message(proof_message(job_id, stage_index, chunk_index, proof), signature)


def tokens_message(entries: list[list[Any]]) -> bytes:
    """entries: [job id hex, position, token id, finish reason or None] per sequence in the frame."""
    return TOKENS_PREFIX + json.dumps(entries, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Complaint:
    """Stage `complainer_stage` refuses a job: the proof it rebuilt for `chunk_index` from the activations it
    received differs from the one `sender_stage` signed (`sender_signature` over `proof_message`).

    `signature` is the complainer's EIP-191 signature over `message()`. The worker re-signs the same fields
    as an EIP-712 `node.bundle.HandoffComplaint` for the bundle (the pipeline knows no chain domain).
    """

    job_id: bytes
    complainer: str
    complainer_stage: int
    sender_stage: int
    chunk_index: int
    claimed_proof: bytes
    rebuilt_proof: bytes
    sender_signature: bytes
    signature: bytes = b""

    @property
    def claimed_digest(self) -> bytes:
        return keccak(self.claimed_proof)

    @property
    def rebuilt_digest(self) -> bytes:
        return keccak(self.rebuilt_proof)

    def message(self) -> bytes:
        return (
            COMPLAINT_PREFIX + self.job_id + self.complainer_stage.to_bytes(4, "big")
            + self.sender_stage.to_bytes(4, "big") + self.chunk_index.to_bytes(4, "big")
            + self.claimed_digest + self.rebuilt_digest
        )

    def signer(self) -> str:
        return recover_message(self.message(), self.signature)

    def to_json(self) -> dict[str, Any]:
        return {k: ("0x" + v.hex()) if isinstance(v, bytes) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Complaint":
        values = dict(data)
        for name in ("job_id", "claimed_proof", "rebuilt_proof", "sender_signature", "signature"):
            values[name] = bytes.fromhex(str(values[name]).removeprefix("0x"))
        return cls(**values)


def make_complaint(
    key: SigningKey, job_id: bytes, complainer_stage: int, chunk_index: int,
    claimed_proof: bytes, rebuilt_proof: bytes, sender_signature: bytes,
) -> Complaint:
    unsigned = Complaint(job_id, key.address, complainer_stage, complainer_stage - 1, chunk_index,
                         claimed_proof, rebuilt_proof, sender_signature)
    return Complaint(**{**unsigned.__dict__, "signature": key.sign_message(unsigned.message())})
