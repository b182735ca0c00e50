"""The job: what a group of stages is asked to compute, and the id everything else refers to.

`JobSpec` is a value: its `job_id` is keccak256 of its canonical encoding (compact JSON, sorted keys,
versioned), so every stage, the validator and anyone replaying the evidence derive the same id from the
same spec. The seed is the orchestrator's (PROTOCOL I1): a worker never picks it.

The three values are validated dataclasses (node/protocol/wire_types.py): each rule is declared once, on its
field, and holds for a spec built in code as for one parsed from the network; the OpenAPI document's
`JobSpec` schema is generated from the same declarations.
"""

from __future__ import annotations

import json
from dataclasses import fields
from functools import cached_property
from typing import Annotated, Any

from pydantic import Field, Strict, model_validator

from ledger.errors import InvalidInput
from node.protocol.precision import DEFAULT_PRECISION, Precision
from node.protocol.signing import keccak256 as keccak
from node.protocol.wire_types import Hex32, UInt, address, bounded_uint, max_items, parse, validated_dataclass

JOB_SPEC_VERSION = 1
MAX_SEED = 2**64 - 1
# Bounds on what one spec makes a validator hash and verify (a request's CPU, issue 15): far above any
# model's context here, and above any group the orchestrator forms.
MAX_PROMPT_TOKENS = 1 << 16
MAX_STAGES = 256
MAX_NEW_TOKENS = 1 << 16


StageWorker = address("stage worker")


class JobSpecError(InvalidInput):
    """A job spec that is malformed: the message says which field and why."""


@validated_dataclass(JobSpecError)
class SamplingParams:
    """How the last stage picks each token. Temperature 0 is plain argmax; top_k 0 and top_p 1 mean off."""

    temperature: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)] = 0.0
    top_p: Annotated[float, Field(strict=True, gt=0, le=1, allow_inf_nan=False)] = 1.0
    top_k: UInt = 0
    max_new_tokens: Annotated[int, Strict(), Field(ge=1, le=MAX_NEW_TOKENS)] = 64
    stop_ids: tuple[UInt, ...] = ()


def check_layer_ranges(stages: tuple[Any, ...]) -> None:
    """Stages cover layers 0.. without gap or overlap: each starts where the one before it ends (ValueError)."""
    if stages[0].layer_start != 0:
        raise ValueError("stage 0 must start at layer 0")
    for before, after in zip(stages, stages[1:]):
        if before.layer_end != after.layer_start:
            raise ValueError("stage layer ranges must be contiguous")


def check_layer_range(stage: Any) -> Any:
    """One stage's layers [layer_start, layer_end) are a non-empty range (ValueError)."""
    if not stage.layer_start < stage.layer_end:
        raise ValueError(f"stage layers [{stage.layer_start}, {stage.layer_end}) are not a non-empty range")
    return stage


@validated_dataclass(JobSpecError)
class StageAssignment:
    """Stage s of a group: the worker that serves it and its layers [layer_start, layer_end)."""

    worker: StageWorker
    layer_start: UInt
    layer_end: UInt

    _range = model_validator(mode="after")(check_layer_range)

    @property
    def num_layers(self) -> int:
        return self.layer_end - self.layer_start


def _add_version(schema: dict[str, Any]) -> None:
    schema["properties"]["version"] = {"const": JOB_SPEC_VERSION}


@validated_dataclass(JobSpecError, json_schema_extra=_add_version)
class JobSpec:
    model_id: Hex32
    prompt_token_ids: Annotated[
        tuple[UInt, ...],
        Field(min_length=1, max_length=MAX_PROMPT_TOKENS),
        max_items(MAX_PROMPT_TOKENS, f"a prompt has at most {MAX_PROMPT_TOKENS} tokens, not {{n}}"),
    ]
    sampling: SamplingParams
    seed: bounded_uint(MAX_SEED)
    group_id: Annotated[str, Strict(), Field(min_length=1, max_length=128)]
    stages: Annotated[
        tuple[StageAssignment, ...],
        Field(min_length=1, max_length=MAX_STAGES),
        max_items(MAX_STAGES, f"a job has between 1 and {MAX_STAGES} stages, not {{n}}"),
    ]
    attempt: bounded_uint(MAX_SEED) = 0  # the orchestrator's count of earlier jobs for the same sequence: a job id is issued once
    precision: Precision = DEFAULT_PRECISION  # what every stage computes in and the replay uses (PROTOCOL I8)

    @model_validator(mode="after")
    def _contiguous(self) -> "JobSpec":
        check_layer_ranges(self.stages)
        return self

    @property
    def num_layers(self) -> int:
        return self.stages[-1].layer_end

    def to_dict(self) -> dict[str, Any]:
        # Field by field rather than dataclasses.asdict, whose deep copies cost more than the hash at intake.
        sampling = {f.name: getattr(self.sampling, f.name) for f in _SAMPLING_FIELDS}
        sampling["stop_ids"] = list(self.sampling.stop_ids)
        return {
            "model_id": self.model_id,
            "prompt_token_ids": list(self.prompt_token_ids),
            "sampling": sampling,
            "seed": self.seed,
            "group_id": self.group_id,
            "stages": [{"worker": s.worker, "layer_start": s.layer_start, "layer_end": s.layer_end} for s in self.stages],
            "version": JOB_SPEC_VERSION,
            **({"attempt": self.attempt} if self.attempt else {}),  # absent when 0: earlier ids stay as they were
            # absent when fp32, for the same reason; any other precision is in the job id, so a job's id names
            # the precision it was issued in and a bundle claiming another one is another (unissued) job
            **({"precision": self.precision} if self.precision != DEFAULT_PRECISION else {}),
        }

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @cached_property
    def job_id(self) -> bytes:
        """keccak256 of the canonical encoding: 32 bytes (computed once: the spec is frozen, and every
        receipt check of a bundle asks for it)."""
        return keccak(self.canonical_bytes())

    @property
    def job_id_hex(self) -> str:
        return "0x" + self.job_id.hex()

    @classmethod
    def from_dict(cls, data: Any) -> "JobSpec":
        """Parse untrusted input: unknown fields, missing fields and wrong types raise JobSpecError."""
        if not isinstance(data, dict):
            raise JobSpecError("a job spec is a JSON object")
        if "version" in data:
            if data["version"] != JOB_SPEC_VERSION:
                raise JobSpecError(f"unsupported job spec version {data['version']!r}")
            data = {k: v for k, v in data.items() if k != "version"}
        return parse(cls, data, JobSpecError)


_SAMPLING_FIELDS = fields(SamplingParams)
