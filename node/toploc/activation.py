"""Where a proof is built and checked: the stage-wise activation proofs a stage commits to, and the
validator's check of them (the sampling proof, its own kind, is in sampling.py).

The proof schedule (INTERFACES.md): for a job with P prompt tokens and N generated tokens a stage sends
its output hidden states for positions 0..P-1 as one prefill block [P, H], then one row per decode step
for positions P..P+N-2. It proves the prefill block with one proof and the decode rows with one proof per
32 rows (the last chunk may be shorter). The validator replays prompt + output[:-1] in one prefill, splits
each stage boundary's hidden states [P+N-1, H] the same way (`split_replay`) and checks each chunk.

`ProofBuilder` is the streaming form the pipeline uses, so each chunk's proof leaves with the chunk it
covers (PROTOCOL I2: the receiver rebuilds it from what it received). It produces exactly the bytes of
`build_proofs` over the same tensors, on any device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from node.toploc.codec import ChunkFigures, Proof, ProofFormatError, build_chunk_proofs, chunk_figures
from node.toploc.thresholds import ACTIVATION, ActivationThresholds

DECODE_CHUNK_ROWS = 32


def decode_chunks(decode: torch.Tensor) -> list[torch.Tensor]:
    """Decode rows [M, H] split into the proof chunks of 32 rows (the last may be shorter)."""
    return [decode[start : start + DECODE_CHUNK_ROWS] for start in range(0, decode.shape[0], DECODE_CHUNK_ROWS)]


def proof_chunks(prefill: torch.Tensor | None, decode: torch.Tensor | None) -> list[torch.Tensor]:
    """The chunks a stage proves, in order: the prefill block (when given), then the decode chunks."""
    chunks = [] if prefill is None else [_rows(prefill, "prefill")]
    if decode is not None:
        chunks += decode_chunks(_rows(decode, "decode"))
    return chunks


def expected_proof_count(prefill_rows: int, decode_rows: int) -> int:
    return (1 if prefill_rows else 0) + -(-decode_rows // DECODE_CHUNK_ROWS)


def split_replay(hidden: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A replayed boundary [P+N-1, H] -> (prefill [P, H], decode [N-1, H])."""
    hidden = _rows(hidden, "hidden")
    if not 0 < prompt_len <= hidden.shape[0]:
        raise ValueError(f"prompt length {prompt_len} does not fit a replay of {hidden.shape[0]} rows")
    return hidden[:prompt_len], hidden[prompt_len:]


def build_proofs(prefill: torch.Tensor | None, decode: torch.Tensor | None) -> list[bytes]:
    """Every proof of a stage at once: [prefill proof] + one per 32 decode rows (258 bytes each)."""
    return build_chunk_proofs(proof_chunks(prefill, decode))


class ProofBuilder:
    """Streaming proofs for one stage of one job: feed the prefill block, then one row per decode step.

    `add_prefill(block)` returns the prefill proof; `add_decode_row(row)` returns a proof when it
    completes a chunk of 32 rows, else None; `finish()` proves the last partial chunk (or None)."""

    def __init__(self) -> None:
        self._rows: list[torch.Tensor] = []
        self._proofs: list[bytes] = []
        self._prefilled = False
        self._finished = False

    @property
    def proofs(self) -> tuple[bytes, ...]:
        """Every proof emitted so far, in order."""
        return tuple(self._proofs)

    def add_prefill(self, block: torch.Tensor) -> bytes:
        if self._prefilled or self._rows or self._finished:
            raise RuntimeError("the prefill block comes first, and once")
        self._prefilled = True
        return self._emit(_rows(block, "prefill"))

    def add_decode_row(self, row: torch.Tensor) -> bytes | None:
        if self._finished:
            raise RuntimeError("the builder is finished")
        row = row.detach()
        if row.dim() == 2 and row.shape[0] == 1:
            row = row[0]
        if row.dim() != 1:
            raise ValueError(f"a decode row is [H] or [1, H], got {tuple(row.shape)}")
        if self._rows and row.shape != self._rows[0].shape:
            raise ValueError("decode rows must all have the same width")
        self._rows.append(row.to(torch.bfloat16))  # bf16 is what is proved; it halves what is held
        if len(self._rows) == DECODE_CHUNK_ROWS:
            return self._flush()
        return None

    def finish(self) -> bytes | None:
        if self._finished:
            raise RuntimeError("the builder is finished")
        self._finished = True
        return self._flush() if self._rows else None

    def _flush(self) -> bytes:
        chunk = torch.stack(self._rows)
        self._rows = []
        return self._emit(chunk)

    def _emit(self, chunk: torch.Tensor) -> bytes:
        proof = build_chunk_proofs([chunk])[0]
        self._proofs.append(proof)
        return proof


@dataclass(frozen=True)
class ChunkCheck:
    """One chunk's verdict with its raw figures. `rows` is [start, end) in the stage's sent rows
    (prefill rows first); `figures` is None when the proof bytes were unusable (`error` says why)."""

    index: int
    kind: str  # "prefill" | "decode"
    rows: tuple[int, int]
    ok: bool
    figures: ChunkFigures | None
    error: str | None = None


@dataclass(frozen=True)
class StageProofCheck:
    """A stage's proofs against the validator's replay: the verdict, the figures of every chunk, the
    first failing chunk (index into the proof list) and the thresholds that judged them."""

    ok: bool
    chunks: tuple[ChunkCheck, ...]
    first_failure: int | None
    thresholds: ActivationThresholds
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_proofs(
    prefill: torch.Tensor | None,
    decode: torch.Tensor | None,
    proofs: Sequence[bytes],
    thresholds: ActivationThresholds = ACTIVATION,
) -> StageProofCheck:
    """Check a stage's proofs against replayed activations. Faults of the stage (missing, extra or
    malformed proofs, figures over the thresholds) fail the check; bad replay tensors raise ValueError."""
    chunks = proof_chunks(prefill, decode)
    spans = _spans(chunks)
    usable: dict[int, Proof] = {}
    errors: dict[int, str] = {}
    for index, (chunk, proof) in enumerate(zip(chunks, proofs)):
        try:
            decoded = Proof.from_bytes(proof)
            needed = min(chunk.numel(), 128)
            if len(decoded.coefficients) != needed:
                raise ProofFormatError(f"proof has {len(decoded.coefficients)} points, the chunk needs {needed}")
            usable[index] = decoded
        except (ProofFormatError, TypeError) as error:
            errors[index] = str(error)
    figures = dict(zip(usable, chunk_figures([chunks[i] for i in usable], list(usable.values()))))
    checks = []
    for index, chunk in enumerate(chunks):
        kind = "prefill" if prefill is not None and index == 0 else "decode"
        if index in figures:
            rows = spans[index][1] - spans[index][0]
            checks.append(ChunkCheck(index, kind, spans[index], thresholds.chunk_passes(figures[index], rows), figures[index]))
        else:
            error = errors.get(index, "proof missing")
            checks.append(ChunkCheck(index, kind, spans[index], False, None, error))
    first = next((check.index for check in checks if not check.ok), None)
    reason = None
    if first is not None:
        failed = checks[first]
        reason = f"{failed.kind} chunk {first} (rows {failed.rows[0]}..{failed.rows[1] - 1}): " + (
            failed.error or _describe(failed.figures, thresholds)
        )
    if len(proofs) > len(chunks):
        if first is None:
            first = len(chunks)
            reason = f"{len(proofs)} proofs for {len(chunks)} chunks"
    return StageProofCheck(first is None, tuple(checks), first, thresholds, reason)


def _describe(figures: ChunkFigures | None, thresholds: ActivationThresholds) -> str:
    assert figures is not None
    return (
        f"exp mismatches {figures.exp_mismatches} (max {thresholds.max_exp_mismatches}), "
        f"sign mismatches {figures.sign_mismatches} (max {thresholds.max_sign_mismatches}), "
        f"mantissa error mean {figures.mant_err_mean:.3g} (max {thresholds.max_mant_err_mean}), "
        f"median {figures.mant_err_median:.3g} (max {thresholds.max_mant_err_median})"
    )


def _spans(chunks: list[torch.Tensor]) -> list[tuple[int, int]]:
    spans, start = [], 0
    for chunk in chunks:
        spans.append((start, start + chunk.shape[0]))
        start += chunk.shape[0]
    return spans


def _rows(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [rows, hidden]")
    return tensor.detach()
