"""One sequence (one job) as a stage sees it, and what the stage hands over when the job ends.

`SequenceState` is the mutable per-stage record: the KV cache, the proof builder over what this stage sends,
the rebuild of what its predecessor sent, the tokens so far. `StageResult` is the frozen summary a worker
turns into its signed receipt (node/receipts.py): the stage's proofs, the tokens it consumed or produced,
and its work units.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from node.job import JobSpec
from node.pipeline.handoff import Complaint
from node.pipeline.model import KVCache

RUNNING, SAMPLED, DONE, FAILED = "running", "sampled", "done", "failed"


class SequenceFailed(Exception):
    """A sequence cannot go on at this stage: the message says why; `complaint` when a handoff proof failed."""

    def __init__(self, reason: str, complaint: Complaint | None = None):
        super().__init__(reason)
        self.reason = reason
        self.complaint = complaint


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
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StageResult":
        return cls(
            job_id=data["job_id"], spec=JobSpec.from_dict(data["spec"]), stage_index=int(data["stage_index"]),
            layer_start=int(data["layer_start"]), layer_end=int(data["layer_end"]),
            proofs=tuple(bytes.fromhex(p.removeprefix("0x")) for p in data["proofs"]),
            consumed_token_ids=tuple(data["consumed_token_ids"]), produced_token_ids=tuple(data["produced_token_ids"]),
            output_token_ids=tuple(data["output_token_ids"]), token_count=int(data["token_count"]),
            work_units=int(data["work_units"]), finish_reason=data["finish_reason"],
        )


@dataclass
class SequenceState:
    spec: JobSpec
    job_id: bytes
    cache: KVCache | None
    outbound: Any  # ProofBuilder over the rows this stage sends
    inbound: Any | None  # ProofBuilder over the rows received from the previous stage (None on stage 0)
    proofs: list[bytes] = field(default_factory=list)
    rebuilt: list[bytes] = field(default_factory=list)  # chunk proofs rebuilt from received rows
    claimed: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # chunk -> (proof, sender signature)
    checked_chunks: int = 0
    output: list[int] = field(default_factory=list)
    rows_done: int = 0
    status: str = RUNNING
    finish_reason: str | None = None
    error: str | None = None
    complaint: Complaint | None = None
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
