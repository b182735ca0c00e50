"""The signed parts of the handoff between stages (PROTOCOL I2), as byte strings and small frozen values.

- A link opens with a challenge-response hello: the responder sends a fresh nonce, the caller signs
  (group, its stage index, its address, the responder's address, its own fresh nonce, the challenge), and the
  responder answers with the same over the caller's nonce. Each side checks the other is the neighbour its
  assignment names; a recorded hello is useless on a new connection.
- Every completed proof chunk is signed by the stage that sent the activations, as a `HandoffClaim`: job id,
  stage, chunk, the positions it covers, the wire dtype, the keccak of the exact bytes sent for those rows
  and the proof. The receiver hashes what it received and rebuilds the proof from it: a digest that differs
  means the bytes are not the ones the sender signed (the job is refused, nobody can be blamed); a signed
  digest that matches with a rebuilt proof that differs is evidence against the sender, and the receiver
  keeps it in a `Complaint` (node/protocol/complaints.py: the rows themselves, the claim and the sender's
  signature), which anyone can judge from the rows alone (node/validator/handoff_faults.py).
- The last stage signs every token frame it sends to stage 0 (`tokens_message`); stage 0 checks the
  signature before it embeds a token.

All signatures are EIP-191 messages (node/protocol/signing.py), with a distinct prefix per kind so one can never be
replayed as another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from eth_hash.auto import keccak

from node.protocol.receipts import parse_hex
from node.protocol.signing import SignatureError, SigningKey, recover_message

HELLO_PREFIX = b"stagewise/link-hello/v1"
CLAIM_PREFIX = b"stagewise/handoff-claim/v2"
TOKENS_PREFIX = b"stagewise/tokens/v1"
INPUTS_ROUTE = "/v1/jobs/{job_id}/inputs"  # a worker's stage server: the rows its stage received (its defence)
DTYPE_CODES = {"fp32": 0, "fp16": 1, "bf16": 2}
DTYPE_SIZES = {"fp32": 4, "fp16": 2, "bf16": 2}


def hello_message(group_id: str, stage_index: int, address: str, peer: str, nonce: bytes, challenge: bytes) -> bytes:
    body = {"group": group_id, "stage": stage_index, "address": address, "peer": peer,
            "nonce": nonce.hex(), "challenge": challenge.hex()}
    return HELLO_PREFIX + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def rows_digest(data: bytes) -> bytes:
    """keccak256 of the rows exactly as they travel: wire dtype, little-endian, row after row."""
    return keccak(data)


@dataclass(frozen=True)
class HandoffClaim:
    """What stage `sender_stage` signs for chunk `chunk_index` of a job: the `count` rows from position `start`
    it sent in `dtype` hash to `rows_digest`, and `proof` is their TOPLOC proof."""

    job_id: bytes
    sender_stage: int
    chunk_index: int
    start: int
    count: int
    dtype: str
    rows_digest: bytes
    proof: bytes

    def message(self) -> bytes:
        return (
            CLAIM_PREFIX + self.job_id + self.sender_stage.to_bytes(4, "big") + self.chunk_index.to_bytes(4, "big")
            + self.start.to_bytes(4, "big") + self.count.to_bytes(4, "big") + bytes([DTYPE_CODES[self.dtype]])
            + self.rows_digest + self.proof
        )

    def sign(self, key: SigningKey) -> bytes:
        return key.sign_message(self.message())

    def signer(self, signature: bytes) -> str:
        """The address that signed this claim (SignatureError when the signature does not recover)."""
        return recover_message(self.message(), signature)

    def signed_by(self, signature: bytes, address: str) -> bool:
        try:
            return self.signer(signature) == address
        except (SignatureError, ValueError):
            return False


def tokens_message(entries: list[list[Any]]) -> bytes:
    """entries: [job id hex, position, token id, finish reason or None] per sequence in the frame."""
    return TOKENS_PREFIX + json.dumps(entries, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ReceivedHandoff:
    """A chunk a stage received and accepted: the sender's signed claim and the bytes it covers. A worker keeps
    these until its job's verdict: they are its defence when its own proofs fail on a replay of honest
    inputs (the validator compares them with its replay of the sender, PROTOCOL I2)."""

    claim: HandoffClaim
    signature: bytes
    rows: bytes

    def to_json(self, *, with_rows: bool = True) -> dict[str, Any]:
        claim = self.claim
        data = {"chunk": claim.chunk_index, "start": claim.start, "count": claim.count, "dtype": claim.dtype,
                "rows_digest": "0x" + claim.rows_digest.hex(), "proof": "0x" + claim.proof.hex(),
                "signature": "0x" + self.signature.hex()}
        if with_rows:
            data["rows"] = "0x" + self.rows.hex()
        return data


def handoff_from_json(job_id_hex: str, sender_stage: int, data: dict[str, Any]) -> ReceivedHandoff:
    """Parse `ReceivedHandoff.to_json` (rows optional); ValueError/KeyError/TypeError on a malformed one."""
    for name in ("chunk", "start", "count"):
        if not (isinstance(data[name], int) and not isinstance(data[name], bool) and 0 <= data[name] < 2**32):
            raise ValueError(f"handoff {name} must be an integer in [0, 2**32)")
    if data["dtype"] not in DTYPE_CODES:
        raise ValueError(f"handoff dtype must be one of {sorted(DTYPE_CODES)}")
    claim = HandoffClaim(bytes.fromhex(job_id_hex.removeprefix("0x")), sender_stage, data["chunk"], data["start"],
                         data["count"], data["dtype"], parse_hex(data["rows_digest"], "handoff rows_digest", length=32),
                         parse_hex(data["proof"], "handoff proof"))
    rows = parse_hex(data["rows"], "handoff rows") if "rows" in data else b""
    return ReceivedHandoff(claim, parse_hex(data["signature"], "handoff signature"), rows)
