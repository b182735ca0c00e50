"""A receiving stage's complaint against its sender (PROTOCOL I2): one class, from the pipeline to the chain.

A stage that receives rows whose digest matches what the sender signed, but whose rebuilt proof is not
the proof the sender signed, refuses the job and keeps the evidence: the rows it received for that chunk,
the sender's signed claim over them (positions, dtype, digest of the bytes, proof) and the sender's
signature. The pipeline carries it to the stage's own worker and a `summary()` of it round the ring; the
worker signs it (`signed`, EIP-712, over every field; the rows are bound through the claim's digest,
which they must match) and puts it in the bundle. node/validator/handoff_faults.py judges it from the rows
alone: the sender is at fault when it signed these bytes with a proof they do not have; any other
complaint is false and costs the complainer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from node.protocol.handoff import HandoffClaim
from node.protocol.receipts import ReceiptDomain, keccak
from node.protocol.signing import SigningKey

COMPLAINT_TYPE = (
    "HandoffComplaint(bytes32 jobId,uint32 complainerStage,uint32 senderStage,uint32 chunkIndex,uint32 start,"
    "uint32 count,string dtype,bytes32 rowsDigest,bytes32 claimedProofDigest,bytes32 senderSignatureDigest)"
)
COMPLAINT_TYPEHASH = keccak(COMPLAINT_TYPE.encode())


@dataclass(frozen=True)
class Complaint:
    """Evidence that stage `claim.sender_stage` handed over rows whose proof is not the one it signed.

    `rows` are the bytes the complaining stage received for the chunk (they hash to `claim.rows_digest`),
    `sender_signature` the sender's signature over `claim`, `signature` the complainer's own (empty until its
    worker signs it for the bundle)."""

    complainer_stage: int
    claim: HandoffClaim
    sender_signature: bytes
    rows: bytes
    signature: bytes = b""

    @property
    def job_id(self) -> bytes:
        return self.claim.job_id

    @property
    def sender_stage(self) -> int:
        return self.claim.sender_stage

    @property
    def chunk_index(self) -> int:
        return self.claim.chunk_index

    def summary(self) -> dict[str, Any]:
        """What travels round the ring with the abort: who complains about whom, for which chunk."""
        return {"complainer_stage": self.complainer_stage, "sender_stage": self.sender_stage,
                "chunk_index": self.chunk_index}

    def struct_hash(self) -> bytes:
        claim = self.claim
        return keccak(
            COMPLAINT_TYPEHASH
            + claim.job_id
            + self.complainer_stage.to_bytes(32, "big")
            + claim.sender_stage.to_bytes(32, "big")
            + claim.chunk_index.to_bytes(32, "big")
            + claim.start.to_bytes(32, "big")
            + claim.count.to_bytes(32, "big")
            + keccak(claim.dtype.encode())
            + claim.rows_digest
            + keccak(claim.proof)
            + keccak(self.sender_signature)
        )

    def digest(self, domain: ReceiptDomain) -> bytes:
        return keccak(b"\x19\x01" + domain.separator + self.struct_hash())

    def signed(self, key: SigningKey, domain: ReceiptDomain) -> "Complaint":
        """This complaint signed by the complaining stage's worker for this deployment."""
        return replace(self, signature=key.sign_digest(self.digest(domain)))

    def to_json(self) -> dict[str, Any]:
        claim = self.claim
        return {
            "job_id": "0x" + claim.job_id.hex(), "complainer_stage": self.complainer_stage,
            "sender_stage": claim.sender_stage, "chunk_index": claim.chunk_index, "start": claim.start,
            "count": claim.count, "dtype": claim.dtype, "rows_digest": "0x" + claim.rows_digest.hex(),
            "claimed_proof": "0x" + claim.proof.hex(), "sender_signature": "0x" + self.sender_signature.hex(),
            "rows": "0x" + self.rows.hex(), "signature": "0x" + self.signature.hex(),
        }
