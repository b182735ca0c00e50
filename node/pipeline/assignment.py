"""What a stage server is told to serve: one stage of one group, and who its neighbours are.

The orchestrator (or a local pipeline) sends an `Assignment` to every stage server of a group. It names
the model by `model_id`, every stage's worker address, stage server URL and layer range, and this server's
index. A stage accepts link connections only from the stage before it and connects only to the stage after
it (the last stage connects to stage 0, which is how sampled tokens get back). Re-sending an assignment with
a different neighbour (a replacement worker) re-points the links without reloading the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from eth_utils import is_address, to_checksum_address

from node.protocol.job import JobSpec
from node.pipeline.wire import WIRE_DTYPES


class AssignmentError(ValueError):
    """An assignment that is malformed or does not fit this server."""


@dataclass(frozen=True)
class PeerStage:
    worker: str
    url: str
    layer_start: int
    layer_end: int

    def __post_init__(self) -> None:
        if not (isinstance(self.worker, str) and is_address(self.worker)):
            raise AssignmentError(f"stage worker {self.worker!r} is not an address")
        object.__setattr__(self, "worker", to_checksum_address(self.worker))
        if not (isinstance(self.url, str) and self.url.startswith(("http://", "https://"))):
            raise AssignmentError(f"stage url {self.url!r} must be http(s)://host:port")
        object.__setattr__(self, "url", self.url.rstrip("/"))
        if not (isinstance(self.layer_start, int) and isinstance(self.layer_end, int) and 0 <= self.layer_start < self.layer_end):
            raise AssignmentError(f"layers [{self.layer_start}, {self.layer_end}) are not a range")


@dataclass(frozen=True)
class Assignment:
    group_id: str
    model_id: str
    stage_index: int
    stages: tuple[PeerStage, ...]
    wire_dtype: str = "fp32"

    def __post_init__(self) -> None:
        if not (isinstance(self.group_id, str) and 0 < len(self.group_id) <= 128):
            raise AssignmentError("group_id must be a non-empty string")
        if not (isinstance(self.model_id, str) and self.model_id.startswith("0x") and len(self.model_id) == 66):
            raise AssignmentError("model_id must be a 0x-prefixed 32-byte hex string")
        object.__setattr__(self, "model_id", self.model_id.lower())
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise AssignmentError("an assignment lists at least one stage")
        if not (isinstance(self.stage_index, int) and 0 <= self.stage_index < len(self.stages)):
            raise AssignmentError(f"stage_index {self.stage_index} is outside 0..{len(self.stages) - 1}")
        if self.stages[0].layer_start != 0:
            raise AssignmentError("stage 0 must start at layer 0")
        for before, after in zip(self.stages, self.stages[1:]):
            if before.layer_end != after.layer_start:
                raise AssignmentError("stage layer ranges must be contiguous")
        if self.wire_dtype not in WIRE_DTYPES:
            raise AssignmentError(f"wire_dtype must be one of {sorted(WIRE_DTYPES)}")

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
        if not isinstance(data, dict):
            raise AssignmentError("an assignment is a JSON object")
        allowed = {"group_id", "model_id", "stage_index", "stages", "wire_dtype"}
        unknown = set(data) - allowed
        if unknown:
            raise AssignmentError(f"unknown assignment field(s) {sorted(unknown)}")
        missing = allowed - {"wire_dtype"} - set(data)
        if missing:
            raise AssignmentError(f"missing assignment field(s) {sorted(missing)}")
        stages = data["stages"]
        if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
            raise AssignmentError("stages must be a list of objects")
        try:
            peers = tuple(PeerStage(**s) for s in stages)
        except TypeError as error:
            raise AssignmentError(f"stage entry: {error}") from None
        return cls(data["group_id"], data["model_id"], data["stage_index"], peers, data.get("wire_dtype", "fp32"))
