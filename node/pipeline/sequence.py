"""One sequence (one job) as a stage sees it, and what the stage hands over when the job ends.

`SequenceState` is the mutable per-stage record: the KV cache, the proof builder over what this stage sends,
the rebuild of what its predecessor sent, the tokens so far. `StageResult` is the frozen summary a worker
turns into its signed receipt (node/protocol/receipts.py): the stage's proofs, the tokens it consumed or produced,
and its work units.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from ledger import json_input
from ledger.errors import StagewiseError
from node.pipeline.model import KVCache
from node.protocol.bundle import MAX_PROOF_BYTES
from node.protocol.complaints import Complaint
from node.protocol.handoff import ReceivedHandoff, handoff_from_json
from node.protocol.job import JobSpec

RUNNING, SAMPLED, DONE, FAILED = "running", "sampled", "done", "failed"


class SequenceFailed(StagewiseError):
    """A sequence cannot go on at this stage: the message says why. `complaint` holds the evidence when this
    stage caught its predecessor's handoff lie; `summary` is what travels round the ring about a complaint
    (who complains about whom, for which chunk), here or from the stage that made it."""

    def __init__(self, reason: str, complaint: Complaint | None = None, summary: dict[str, Any] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.complaint = complaint
        self.summary = summary if summary is not None else (complaint.summary() if complaint else None)


@dataclass(frozen=True)
class StageResult:
    """What stage `stage_index` computed for a finished job, everything its receipt needs.

    proofs: this stage's TOPLOC proofs in order (prefill chunk, then one per 32 decode rows).
    consumed_token_ids: the prompt stage 0 embedded (empty elsewhere); produced_token_ids: the tokens the
    last stage sampled (empty elsewhere); output_token_ids: the job's output, known to every stage at the end.
    token_count: positions this stage ran (prompt + output - 1); work_units: layers x token_count.
    """

    job_id: str
    spec: JobSpec
    stage_index: int
    layer_start: int
    layer_end: int
    proofs: tuple[bytes, ...]
    consumed_token_ids: tuple[int, ...]
    produced_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    token_count: int
    work_units: int
    finish_reason: str
    handoffs: tuple[ReceivedHandoff, ...] = ()  # what this stage received, chunk by chunk (none on stage 0)

    def without_rows(self) -> "StageResult":
        """The same result holding only the claims (the rows go to the worker once, not into every cache)."""
        return replace(self, handoffs=tuple(replace(h, rows=b"") for h in self.handoffs))

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "spec": self.spec.to_dict(),
            "stage_index": self.stage_index,
            "layer_start": self.layer_start,
            "layer_end": self.layer_end,
            "proofs": ["0x" + p.hex() for p in self.proofs],
            "consumed_token_ids": list(self.consumed_token_ids),
            "produced_token_ids": list(self.produced_token_ids),
            "output_token_ids": list(self.output_token_ids),
            "token_count": self.token_count,
            "work_units": self.work_units,
            "finish_reason": self.finish_reason,
            "handoffs": [h.to_json(with_rows=False) for h in self.handoffs],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StageResult":
        return cls(
            job_id=data["job_id"], spec=JobSpec.from_dict(data["spec"]), stage_index=int(data["stage_index"]),
            layer_start=int(data["layer_start"]), layer_end=int(data["layer_end"]),
            proofs=tuple(json_input.hex_bytes(p, "proof", max_length=MAX_PROOF_BYTES) for p in data["proofs"]),
            consumed_token_ids=tuple(data["consumed_token_ids"]), produced_token_ids=tuple(data["produced_token_ids"]),
            output_token_ids=tuple(data["output_token_ids"]), token_count=int(data["token_count"]),
            work_units=int(data["work_units"]), finish_reason=data["finish_reason"],
            handoffs=tuple(handoff_from_json(data["job_id"], int(data["stage_index"]) - 1, h)
                           for h in data.get("handoffs", ())),
        )


@dataclass(frozen=True)
class ChunkRows:
    """The rows of one proof chunk as they travelled: positions [start, start + count), in `dtype`."""

    start: int
    count: int
    dtype: str
    data: bytes


@dataclass
class ChunkTape:
    """Collects the wire bytes of one direction of a job until the proof schedule closes a chunk."""

    start: int | None = None
    count: int = 0
    dtype: str | None = None
    parts: list[bytes] = field(default_factory=list)

    def add(self, start: int, count: int, dtype: str, data: bytes) -> None:
        if self.start is None:
            self.start, self.dtype = start, dtype
        elif dtype != self.dtype or start != self.start + self.count:
            raise SequenceFailed(f"rows at position {start} in {dtype} do not continue the chunk "
                                 f"[{self.start}, {self.start + self.count}) in {self.dtype}")
        self.count += count
        self.parts.append(data)

    def close(self) -> ChunkRows:
        if self.start is None:
            raise SequenceFailed("a proof chunk closed with no rows")
        chunk = ChunkRows(self.start, self.count, self.dtype, b"".join(self.parts))
        self.start, self.count, self.dtype, self.parts = None, 0, None, []
        return chunk


@dataclass
class SequenceState:
    spec: JobSpec
    job_id: bytes
    cache: KVCache | None
    outbound: Any  # ProofBuilder over the rows this stage sends
    inbound: Any | None  # ProofBuilder over the rows received from the previous stage (None on stage 0)
    proofs: list[bytes] = field(default_factory=list)
    rebuilt: list[bytes] = field(default_factory=list)  # chunk proofs rebuilt from received rows
    received: list[ChunkRows] = field(default_factory=list)  # the rows of those chunks, as received
    claimed: dict[int, tuple[bytes, bytes, bytes]] = field(default_factory=dict)  # chunk -> (proof, digest, signature)
    handoffs: list[ReceivedHandoff] = field(default_factory=list)  # chunks checked and accepted
    in_tape: ChunkTape = field(default_factory=ChunkTape)
    out_tape: ChunkTape = field(default_factory=ChunkTape)
    checked_chunks: int = 0
    output: list[int] = field(default_factory=list)
    rows_done: int = 0
    status: str = RUNNING
    finish_reason: str | None = None
    error: str | None = None
    complaint: dict[str, Any] | None = None  # the summary of the complaint that failed it, if one did
    last_progress: float = field(default_factory=time.monotonic)
    batch: int = 0  # stage 0: the micro-batch it last ran in
    dispatched: float = 0.0  # stage 0: when that micro-batch started
    started: float = field(default_factory=time.monotonic)

    @property
    def job_id_hex(self) -> str:
        return "0x" + self.job_id.hex()

    @property
    def prompt_len(self) -> int:
        return len(self.spec.prompt_token_ids)

    @property
    def active(self) -> bool:
        return self.status in (RUNNING, SAMPLED)
