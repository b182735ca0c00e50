"""The job: what a group of stages is asked to compute, and the id everything else refers to.

`JobSpec` is a value: its `job_id` is keccak256 of its canonical encoding (compact JSON, sorted keys,
versioned), so every stage, the validator and anyone replaying the evidence derive the same id from the
same spec. The seed is the orchestrator's (PROTOCOL I1): a worker never picks it.
"""

from __future__ import annotations

import json
import math
from functools import cached_property, lru_cache
from dataclasses import dataclass, fields
from typing import Any

from node.protocol.signing import keccak256 as keccak
from eth_utils import is_address, to_checksum_address

JOB_SPEC_VERSION = 1
MAX_SEED = 2**64 - 1
# Bounds on what one spec makes a validator hash and verify (a request's CPU, issue 15): far above any
# model's context here, and above any group the orchestrator forms.
MAX_PROMPT_TOKENS = 1 << 16
MAX_STAGES = 256


class JobSpecError(ValueError):
    """A job spec that is malformed: the message says which field and why."""


@dataclass(frozen=True)
class SamplingParams:
    """How the last stage picks each token. Temperature 0 is plain argmax; top_k 0 and top_p 1 mean off."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise JobSpecError("sampling.temperature must be a finite number >= 0")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise JobSpecError("sampling.top_p must be in (0, 1]")
        if not (_is_int(self.top_k) and self.top_k >= 0):
            raise JobSpecError("sampling.top_k must be an integer >= 0")
        if not (_is_int(self.max_new_tokens) and 1 <= self.max_new_tokens <= 1 << 16):
            raise JobSpecError("sampling.max_new_tokens must be an integer in [1, 65536]")
        if not all(_is_int(t) and t >= 0 for t in self.stop_ids):
            raise JobSpecError("sampling.stop_ids must be non-negative integers")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
        object.__setattr__(self, "stop_ids", tuple(self.stop_ids))


@dataclass(frozen=True)
class StageAssignment:
    """Stage s of a group: the worker that serves it and its layers [layer_start, layer_end)."""

    worker: str
    layer_start: int
    layer_end: int

    def __post_init__(self) -> None:
        checksummed = _checksummed(self.worker) if isinstance(self.worker, str) else None
        if checksummed is None:
            raise JobSpecError(f"stage worker {self.worker!r} is not an Ethereum address")
        object.__setattr__(self, "worker", checksummed)
        if not (_is_int(self.layer_start) and _is_int(self.layer_end) and 0 <= self.layer_start < self.layer_end):
            raise JobSpecError(f"stage layers [{self.layer_start}, {self.layer_end}) are not a non-empty range")

    @property
    def num_layers(self) -> int:
        return self.layer_end - self.layer_start


@dataclass(frozen=True)
class JobSpec:
    model_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    seed: int
    group_id: str
    stages: tuple[StageAssignment, ...]
    attempt: int = 0  # the orchestrator's count of earlier jobs for the same sequence: a job id is issued once

    def __post_init__(self) -> None:
        if not (_is_int(self.attempt) and 0 <= self.attempt <= MAX_SEED):
            raise JobSpecError("attempt must be an integer in [0, 2**64)")
        if not (isinstance(self.model_id, str) and self.model_id.startswith("0x") and len(self.model_id) == 66):
            raise JobSpecError("model_id must be a 0x-prefixed 32-byte hex string")
        try:
            bytes.fromhex(self.model_id[2:])
        except ValueError as error:
            raise JobSpecError("model_id must be hex") from error
        object.__setattr__(self, "model_id", self.model_id.lower())
        prompt = self.prompt_token_ids
        if isinstance(prompt, (list, tuple)) and len(prompt) > MAX_PROMPT_TOKENS:
            raise JobSpecError(f"a prompt has at most {MAX_PROMPT_TOKENS} tokens, not {len(prompt)}")
        plain = bool(prompt) and set(map(type, prompt)) == {int} and min(prompt) >= 0  # C-speed common case
        if not plain and (not prompt or not all(_is_int(t) and t >= 0 for t in prompt)):
            raise JobSpecError("prompt_token_ids must be a non-empty list of non-negative integers")
        object.__setattr__(self, "prompt_token_ids", tuple(self.prompt_token_ids))
        if not (_is_int(self.seed) and 0 <= self.seed <= MAX_SEED):
            raise JobSpecError("seed must be an integer in [0, 2**64)")
        if not (isinstance(self.group_id, str) and 0 < len(self.group_id) <= 128):
            raise JobSpecError("group_id must be a non-empty string of at most 128 characters")
        if not self.stages or len(self.stages) > MAX_STAGES:
            raise JobSpecError(f"a job has between 1 and {MAX_STAGES} stages")
        object.__setattr__(self, "stages", tuple(self.stages))
        if self.stages[0].layer_start != 0:
            raise JobSpecError("stage 0 must start at layer 0")
        for before, after in zip(self.stages, self.stages[1:]):
            if before.layer_end != after.layer_start:
                raise JobSpecError("stage layer ranges must be contiguous")

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
        data = dict(data)
        version = data.pop("version", JOB_SPEC_VERSION)
        if version != JOB_SPEC_VERSION:
            raise JobSpecError(f"unsupported job spec version {version!r}")
        attempt = data.pop("attempt", 0)
        _check_keys("job", data, _FIELD_NAMES[cls] - {"attempt"})
        sampling = data["sampling"]
        if not isinstance(sampling, dict):
            raise JobSpecError("sampling must be an object")
        _check_keys("sampling", sampling, _FIELD_NAMES[SamplingParams], required=False)
        stages = data["stages"]
        if not isinstance(stages, list):
            raise JobSpecError("stages must be a list")
        parsed_stages = []
        for index, stage in enumerate(stages):
            if not isinstance(stage, dict):
                raise JobSpecError(f"stages[{index}] must be an object")
            _check_keys(f"stages[{index}]", stage, _FIELD_NAMES[StageAssignment])
            parsed_stages.append(StageAssignment(**stage))
        if not isinstance(data["prompt_token_ids"], list):
            raise JobSpecError("prompt_token_ids must be a list")
        stop_ids = sampling.get("stop_ids", [])
        if not isinstance(stop_ids, list):
            raise JobSpecError("sampling.stop_ids must be a list")
        return cls(
            model_id=data["model_id"],
            prompt_token_ids=tuple(data["prompt_token_ids"]),
            sampling=SamplingParams(**{**sampling, "stop_ids": tuple(stop_ids)}),
            seed=data["seed"],
            group_id=data["group_id"],
            stages=tuple(parsed_stages),
            attempt=attempt,
        )


@lru_cache(maxsize=65536)
def _checksummed(address: str) -> str | None:
    """The checksummed form of an address, None if it is not one (cached: the same workers sign job after job)."""
    return to_checksum_address(address) if is_address(address) else None


_SAMPLING_FIELDS = fields(SamplingParams)
_FIELD_NAMES = {cls: frozenset(f.name for f in fields(cls)) for cls in (JobSpec, SamplingParams, StageAssignment)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(where: str, data: dict, allowed: set[str], required: bool = True) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise JobSpecError(f"{where}: unknown field(s) {sorted(unknown)}")
    if required:
        missing = allowed - set(data)
        if missing:
            raise JobSpecError(f"{where}: missing field(s) {sorted(missing)}")
