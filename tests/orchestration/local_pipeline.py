"""An in-process pipeline for orchestration tests: real stage models, real KV caches, real sampling.

Each `LocalWorker` holds the `StageModel` of the layers its group gave it (loaded from the model directory
by node.pipeline.weights.load_stage) and a KV cache per job; `LocalPipeline.run` passes hidden states stage
to stage and samples with node.toploc.sampling, exactly the computation the stage servers do, minus HTTP.
`kill()` makes a worker fail at its next step, the way a crashed stage server does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import torch

from node.orchestration.grouping import Group
from node.orchestration.pipeline_driver import JobInterrupted, StageFailure, TokenSink
from node.orchestration.registry import WorkerRecord
from node.pipeline.weights import load_stage
from node.protocol.job import JobSpec
from node.toploc.sampling import sample_next


class LocalWorker:
    def __init__(self, address: str, model_dir) -> None:
        self.address = address
        self.model_dir = model_dir
        self.alive = True
        self.stages: dict[str, object] = {}  # group id -> StageModel
        self.kill_after_steps: int | None = None
        self.steps = 0

    def kill(self) -> None:
        self.alive = False

    def step(self) -> None:
        self.steps += 1
        if self.kill_after_steps is not None and self.steps > self.kill_after_steps:
            self.alive = False
        if not self.alive:
            raise StageFailure(self.address, "connection refused")


class LocalPipeline:
    def __init__(self, model_dir, workers: Mapping[str, LocalWorker]) -> None:
        self.model_dir = model_dir
        self.workers = dict(workers)
        self.prepared: list[str] = []
        self.released: list[str] = []

    async def prepare(self, group: Group, records: Mapping[str, WorkerRecord]) -> None:
        for stage in group.stages:
            worker = self.workers[stage.worker]
            if not worker.alive:
                raise StageFailure(worker.address, "connection refused")
            worker.stages[group.group_id] = load_stage(self.model_dir, stage.layer_start, stage.layer_end)
        self.prepared.append(group.group_id)

    async def release(self, group: Group) -> None:
        for stage in group.stages:
            self.workers[stage.worker].stages.pop(group.group_id, None)
        self.released.append(group.group_id)

    async def run(self, group: Group, spec: JobSpec, on_tokens: TokenSink) -> tuple[int, ...]:
        workers = [self.workers[s.worker] for s in group.stages]
        if any(group.group_id not in worker.stages for worker in workers):
            raise JobInterrupted(f"group {group.group_id} is not prepared")
        models = [worker.stages[group.group_id] for worker in workers]
        caches = [model.new_cache() for model in models]
        inputs = torch.tensor(spec.prompt_token_ids, dtype=torch.long)
        position = len(spec.prompt_token_ids)
        output: list[int] = []
        while True:
            hidden = inputs
            for worker, model, cache in zip(workers, models, caches):
                worker.step()
                hidden = model(hidden, [cache])
                await asyncio.sleep(0)  # other sequences interleave, as on a real pipeline
            logits = models[-1].logits(hidden[-1:])
            token = int(sample_next(logits, spec.sampling, spec.seed, torch.tensor([position]))[0])
            output.append(token)
            on_tokens([token])
            position += 1
            if len(output) >= spec.sampling.max_new_tokens or token in spec.sampling.stop_ids:
                return tuple(output)
            inputs = torch.tensor([token], dtype=torch.long)
