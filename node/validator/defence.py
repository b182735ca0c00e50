"""A stage's defence: the sender-signed rows it received, against the replay of its predecessor (PROTOCOL I2).

A proof binds only the top-k entries of a chunk, so a sender can change the rest without changing its proof:
its receiver accepts the chunk, computes honestly on it and fails the replay, which fed it the honest rows.
When the replay blames a receiving stage for its proofs, the validator asks that stage for the rows it
received, chunk by chunk, with the claims its predecessor signed over them (the worker keeps them until
the verdict). `check_defence` decides, without touching a model:

- rows that are not exactly what the predecessor signed for the chunks its receipt commits to, or that do
  not cover every position of the job, are no defence: the accused stays blamed;
- rows that differ, beyond `HandoffThresholds.max_row_rel_l1` in any row, from what the predecessor
  honestly sends from its own inputs (`replayed`, computed by node/validator/replay.py) convict the
  predecessor (`altered_handoff`);
- either way, valid rows are the stage's real inputs: the replay goes on from them (node/validator/replay.py
  re-runs the accused stage and those after it on what it received).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from node.pipeline.wire import rows_tensor
from node.protocol.handoff import DTYPE_SIZES, ReceivedHandoff, rows_digest
from node.toploc.activation import DECODE_CHUNK_ROWS
from node.toploc.thresholds import HANDOFF, HandoffThresholds


@dataclass(frozen=True)
class DefenceCheck:
    """`valid`: the rows are exactly what the predecessor signed, covering the job; `altered`: they differ
    from the replay beyond the threshold (the predecessor is at fault); `inputs` the rows as fp32 [T, H]."""

    valid: bool
    altered: bool
    reason: str
    worst_row: int | None = None
    worst_rel_l1: float | None = None
    inputs: Any = None

    def figures(self) -> dict[str, Any]:
        return {"valid": self.valid, "altered": self.altered, "reason": self.reason,
                "worst_row": self.worst_row, "worst_rel_l1": self.worst_rel_l1}


def expected_spans(prompt_len: int, rows: int) -> list[tuple[int, int]]:
    """(start, count) of each chunk a stage sends for `rows` positions: the prefill, then 32 decode rows."""
    spans = [(0, prompt_len)]
    for start in range(prompt_len, rows, DECODE_CHUNK_ROWS):
        spans.append((start, min(DECODE_CHUNK_ROWS, rows - start)))
    return spans


def check_defence(
    handoffs: Sequence[ReceivedHandoff],
    sender: str,
    sender_proofs: Sequence[bytes],
    replayed: Any,
    prompt_len: int,
    thresholds: HandoffThresholds = HANDOFF,
) -> DefenceCheck:
    """Judge the rows an accused stage received against `replayed`, the replay of its predecessor [T, H]."""
    import torch

    total, hidden = replayed.shape
    spans = expected_spans(prompt_len, total)
    if len(handoffs) != len(spans) or len(sender_proofs) != len(spans):
        return DefenceCheck(False, False, f"{len(handoffs)} chunks received for the job's {len(spans)}")
    parts = []
    for index, (handoff, span) in enumerate(zip(handoffs, spans)):
        claim = handoff.claim
        if (claim.chunk_index, claim.start, claim.count) != (index, *span):
            return DefenceCheck(False, False, f"chunk {index} covers [{claim.start}, {claim.start + claim.count}), "
                                              f"the job's chunk is [{span[0]}, {span[0] + span[1]})")
        if claim.proof != sender_proofs[index] or not claim.signed_by(handoff.signature, sender):
            return DefenceCheck(False, False, f"chunk {index} is not what the sender signed with its receipt's proof")
        if rows_digest(handoff.rows) != claim.rows_digest:
            return DefenceCheck(False, False, f"chunk {index}'s rows are not the bytes the sender signed")
        if len(handoff.rows) != claim.count * hidden * DTYPE_SIZES[claim.dtype]:
            return DefenceCheck(False, False, f"chunk {index} holds {len(handoff.rows)} bytes, not {claim.count} rows")
        parts.append(rows_tensor(handoff.rows, claim.dtype, claim.count))
    dtypes = {handoff.claim.dtype for handoff in handoffs}
    if len(dtypes) != 1:
        return DefenceCheck(False, False, "the chunks were sent in different dtypes")
    received = torch.cat([part.float() for part in parts])
    if not torch.isfinite(received).all():
        return DefenceCheck(False, False, "the rows carry non-finite values")
    deviation = row_deviation(received, replayed, dtypes.pop())
    worst = int(deviation.argmax())
    worst_value = float(deviation[worst])
    altered = worst_value > thresholds.max_row_rel_l1
    reason = (f"row {worst} differs from the replay by {worst_value:.3g} relative L1 "
              f"({'over' if altered else 'within'} {thresholds.max_row_rel_l1:g})")
    return DefenceCheck(True, altered, reason, worst, worst_value, received)


MANTISSA_BITS = {"fp32": 23, "fp16": 10, "bf16": 7}


def row_deviation(received: Any, replayed: Any, dtype: str) -> Any:
    """Per row: sum over entries of (|received - replayed rounded to `dtype`| less one `dtype` ulp, at least 0)
    / sum |replayed|. One ulp is forgiven because an honest fp32 drift of 1e-6 still flips a rounding now and
    then; anything a stage changes on purpose moves an entry by more than that."""
    import torch

    # torch: imported where used, to keep it out of start-up
    from node.pipeline.wire import WIRE_DTYPES

    replayed = replayed.detach().float()
    expected = replayed.to(WIRE_DTYPES[dtype]).float()
    _, exponent = torch.frexp(expected)
    ulp = torch.ldexp(torch.ones_like(expected), exponent - 1 - MANTISSA_BITS[dtype])
    excess = ((received.float() - expected).abs() - ulp).clamp_min(0)
    return excess.sum(dim=1) / replayed.abs().sum(dim=1).clamp_min(1e-30)
