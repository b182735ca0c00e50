"""What the orchestrator needs from a pipeline of stage servers, and nothing more.

The orchestrator decides *who* serves *which* layers and *what* to compute; a `PipelineDriver` carries that
to the stage servers: `prepare` a group (each worker loads its layer range and learns its neighbours),
`run` a job on it to the end (reporting tokens as the last stage samples them, so a job cut short still
leaves its history behind) and `release` a group that no longer exists. A stage that stops answering
surfaces as `StageFailure` naming its worker: the orchestrator then reroutes (node/orchestration/rerouting.py);
a failure nobody can be blamed for is `JobInterrupted`, and the sequence continues as if rerouted.

`node.orchestration.stage_control.HttpPipelineDriver` drives the real stage servers of node/pipeline over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from ledger.errors import StagewiseError
from node.orchestration.grouping import Group
from node.orchestration.registry import WorkerRecord
from node.protocol.job import JobSpec

TokenSink = Callable[[Sequence[int]], None]


class StageFailure(StagewiseError):
    """A stage of a group stopped serving (unreachable, crashed, refused): `worker` names it."""

    def __init__(self, worker: str, reason: str) -> None:
        super().__init__(f"stage worker {worker} failed: {reason}")
        self.worker = worker
        self.reason = reason


class JobInterrupted(StagewiseError):
    """A job failed and no stage can be blamed for it (a stall, a reassignment): run it again, drop nobody."""


class PipelineDriver(Protocol):
    async def prepare(self, group: Group, workers: Mapping[str, WorkerRecord]) -> None:
        """Assign every stage of `group` to its worker and connect neighbours; raise StageFailure on a dead one."""

    async def run(self, group: Group, spec: JobSpec, on_tokens: TokenSink) -> tuple[int, ...]:
        """Run `spec` on a prepared group; call `on_tokens(new_ids)` as tokens are sampled; return the output."""

    async def release(self, group: Group) -> None:
        """Forget a group (dissolved or replaced); must not raise for workers that are already gone."""
