"""What the handoff evidence in a bundle proves, without a model (PROTOCOL I2): pure functions of the bundle.

- A complaint (node/protocol/complaints.py) convicts its sender when the sender signed the rows it carries with a
  proof they do not have (`judge_evidence`); otherwise it convicts the complainer (`false_complaint`).
- A receipt names the digest of the handoff proofs its stage received (`inputs_digest`). When it is not the
  digest of the proofs the previous stage committed to in its own receipt, the receiving stage's entry must
  carry what it received (`received`, bound to that digest; intake refuses a bundle without it): a claim
  in it that the sender signed with another proof than its receipt's convicts the sender (`equivocation`);
  otherwise the receiver named inputs its predecessor never signed (`false_inputs`).

The validator calls `handoff_faults` before any replay; `stagewise verify-evidence` calls the same.
"""

from __future__ import annotations

from node.protocol.bundle import Bundle
from node.protocol.complaints import Complaint
from node.protocol.handoff import rows_digest
from node.protocol.receipts import processed_token_count, proofs_digest
from node.validator.verdict import Findings, Reason

Fault = tuple[int, Reason]


def complaint_faults(bundle: Bundle) -> tuple[Fault, ...]:
    faults = []
    for evidence in bundle.complaints:
        if judge_evidence(evidence, bundle.spec.stages[evidence.sender_stage].worker):
            faults.append((evidence.sender_stage, Reason.COMPLAINT))
        else:
            faults.append((evidence.complainer_stage, Reason.FALSE_COMPLAINT))
    return tuple(faults)


def equivocation_faults(bundle: Bundle) -> tuple[Fault, ...]:
    faults = []
    for index in range(1, len(bundle.stages)):
        stage, previous = bundle.stages[index], bundle.stages[index - 1]
        if stage.receipt.inputs_digest == proofs_digest(previous.proofs):
            continue
        # Intake admits only claims the sender signed, each at its chunk's position (bundle._check_received);
        # an evidence file is judged without intake, so the signature is asked for again.
        sender = bundle.spec.stages[index - 1].worker
        equivocated = any(
            handoff.claim.chunk_index >= len(previous.proofs)
            or handoff.claim.proof != previous.proofs[handoff.claim.chunk_index]
            for handoff in stage.received
            if handoff.claim.signed_by(handoff.signature, sender)
        )
        faults.append((index - 1, Reason.EQUIVOCATION) if equivocated else (index, Reason.FALSE_INPUTS))
    return tuple(faults)


def handoff_faults(bundle: Bundle) -> tuple[Fault, ...]:
    """Every fault the bundle's handoff evidence proves, in no particular order (`decide` takes the first
    faulty stage in pipeline order)."""
    return complaint_faults(bundle) + equivocation_faults(bundle)


def findings_without_replay(bundle: Bundle, faults: tuple[Fault, ...]) -> Findings:
    """A complaint stopped the job: no stage's proofs are checked, the evidence alone decides."""
    tokens = processed_token_count(bundle.spec, bundle.output_token_ids)
    work = tuple(stage.num_layers * tokens for stage in bundle.spec.stages)
    return Findings((None,) * len(work), None, work, faults)


def rebuilt_proof(rows: bytes, dtype: str, count: int, prefill: bool) -> bytes:
    """The proof of `count` rows given as wire bytes, built exactly as the receiving stage builds it."""
    # torch: imported where used, to keep it out of start-up
    from node.pipeline.wire import rows_tensor
    from node.toploc.activation import ProofBuilder

    tensor = rows_tensor(rows, dtype, count)
    builder = ProofBuilder()
    if prefill:
        return builder.add_prefill(tensor)
    proof = None
    for row in tensor:
        proof = builder.add_decode_row(row) or proof
    return proof if proof is not None else builder.finish()


def judge_evidence(complaint: Complaint, sender: str) -> bool:
    """True when the evidence proves the sender at fault: `sender` signed the claim, the rows are the ones it
    signed, and the proof rebuilt from them is not the proof it signed. Anything else is a false complaint."""
    claim = complaint.claim
    if not claim.signed_by(complaint.sender_signature, sender):
        return False
    if rows_digest(complaint.rows) != claim.rows_digest:
        return False
    try:
        rebuilt = rebuilt_proof(complaint.rows, claim.dtype, claim.count, prefill=claim.chunk_index == 0)
    except (ValueError, RuntimeError):
        return False  # rows that are no chunk cannot have been signed by an honest sender's check
    return rebuilt != claim.proof
