"""What a stage server is told to serve: one stage of one group, and who its neighbours are.

The orchestrator (or a local pipeline) sends an `Assignment` to every stage server of a group. It names
the model by `model_id`, every stage's worker address, stage server URL and layer range, and this server's
index. A stage accepts link connections only from the stage before it and connects only to the stage after
it (the last stage connects to stage 0, which is how sampled tokens get back). Re-sending an assignment with
a different neighbour (a replacement worker) re-points the links without reloading the weights.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from pydantic import AfterValidator, Field, Strict, model_validator

from ledger.errors import InvalidInput
from node.pipeline.wire import WIRE_DTYPES
from node.protocol.job import JobSpec, StageWorker, check_layer_range, check_layer_ranges
from node.protocol.precision import DEFAULT_PRECISION, Precision
from node.protocol.wire_types import Hex32, UInt, parse, validated_dataclass


class AssignmentError(InvalidInput):
    """An assignment that is malformed or does not fit this server."""


def _stage_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"stage url {url!r} must be http(s)://host:port")
    return url.rstrip("/")


def _wire_dtype(dtype: str) -> str:
    if dtype not in WIRE_DTYPES:
        raise ValueError(f"must be one of {sorted(WIRE_DTYPES)}")
    return dtype


@validated_dataclass(AssignmentError)
class PeerStage:
    worker: StageWorker
    url: Annotated[str, Strict(), AfterValidator(_stage_url)]
    layer_start: UInt
    layer_end: UInt

    _range = model_validator(mode="after")(check_layer_range)


@validated_dataclass(AssignmentError)
class Assignment:
    group_id: Annotated[str, Strict(), Field(min_length=1, max_length=128)]
    model_id: Hex32
    stage_index: UInt
    stages: Annotated[tuple[PeerStage, ...], Field(min_length=1)]
    wire_dtype: Annotated[str, Strict(), AfterValidator(_wire_dtype), Field(json_schema_extra={"enum": sorted(WIRE_DTYPES)})] = "fp32"
    precision: Precision = DEFAULT_PRECISION  # what this group's jobs declare: the stage computes its layers in it (I8)

    @model_validator(mode="after")
    def _fits(self) -> "Assignment":
        if self.stage_index >= len(self.stages):
            raise ValueError(f"stage_index {self.stage_index} is outside 0..{len(self.stages) - 1}")
        check_layer_ranges(self.stages)
        return self

    @property
    def me(self) -> PeerStage:
        return self.stages[self.stage_index]

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def is_first(self) -> bool:
        return self.stage_index == 0

    @property
    def is_last(self) -> bool:
        return self.stage_index == len(self.stages) - 1

    @property
    def next_index(self) -> int:
        return (self.stage_index + 1) % len(self.stages)

    @property
    def previous_index(self) -> int:
        return (self.stage_index - 1) % len(self.stages)

    def check_spec(self, spec: JobSpec) -> None:
        """A job is ours when it names this group, model, and exactly these workers and layer ranges."""
        if spec.group_id != self.group_id:
            raise AssignmentError(f"job is for group {spec.group_id!r}, this stage serves {self.group_id!r}")
        if spec.model_id != self.model_id:
            raise AssignmentError(f"job is for model {spec.model_id}, this group runs {self.model_id}")
        if spec.precision != self.precision:
            raise AssignmentError(f"job declares {spec.precision}, this group computes in {self.precision}")
        ours = [(s.worker, s.layer_start, s.layer_end) for s in self.stages]
        theirs = [(s.worker, s.layer_start, s.layer_end) for s in spec.stages]
        if ours != theirs:
            raise AssignmentError("job's stages (workers and layer ranges) differ from this group's assignment")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [asdict(s) for s in self.stages]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "Assignment":
        """Parse untrusted input (already through ledger/json_input): any defect raises AssignmentError."""
        if not isinstance(data, dict):
            raise AssignmentError("an assignment is a JSON object")
        return parse(cls, data, AssignmentError, "assignment")
