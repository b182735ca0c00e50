"""Orchestration over the real stage servers (node/pipeline/server.py): HTTP assignment, signed links,
proofs, streaming. A stage server is stopped mid-job; the spare takes its stage and the job's tokens are
the ones the whole model produces alone."""

from __future__ import annotations

import asyncio

import pytest
import torch

from node.orchestration.dispatch import Dispatcher, DispatchPolicy, SeedSchedule
from node.orchestration.grouping import GroupingPolicy, ModelShape
from node.orchestration.orchestrator import Orchestrator
from node.orchestration.registry import Registry, RegistryPolicy, stake_lookup
from node.orchestration.stage_control import HttpPipelineDriver
from node.orchestration.tasks import ByteTokenizer, Task
from node.pipeline.weights import load_stage, model_id
from node.protocol.job import SamplingParams
from node.protocol.signing import SigningKey
from node.protocol.worker_messages import Capacity, make_registration
from node.toploc.sampling import sample_next

from .conftest import MIB

server_module = pytest.importorskip("node.pipeline.server")

SAMPLING = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=40)
SECRET = b"stage-server-test-secret-32bytes!"
CAPACITIES = [Capacity(64 * MIB, 6000.0), Capacity(64 * MIB, 3000.0), Capacity(64 * MIB, 1000.0)]


def generate_alone(model, prompt, seed, count) -> list[int]:
    cache = model.new_cache()
    hidden = model(torch.tensor(prompt), [cache])
    out = []
    for position in range(len(prompt), len(prompt) + count):
        token = int(sample_next(model.logits(hidden[-1:]), SAMPLING, seed, torch.tensor([position]))[0])
        out.append(token)
        hidden = model(torch.tensor([token]), [cache])
    return out


@pytest.mark.slow
async def test_a_stage_server_stopped_mid_job_is_replaced_and_the_tokens_do_not_change(model_dir, worker_keys):
    keys = worker_keys[:3]
    validator = SigningKey.generate()
    servers = {
        k.address: server_module.StageServer(k, model_dirs=[model_dir], stall_timeout_s=10.0, controllers=[validator.address])
        for k in keys
    }
    for server in servers.values():
        await server.start()
    registry = Registry(stake_lookup({k.address: 10**18 for k in keys}), RegistryPolicy())
    driver = HttpPipelineDriver(model_dir, key=validator)
    orchestrator = Orchestrator(registry, driver, model_id(model_dir), ModelShape(10, 4 * MIB), GroupingPolicy(stages_per_group=2))
    try:
        for key, capacity in zip(keys, CAPACITIES):
            await orchestrator.register(make_registration(key, capacity, "eu", servers[key.address].url))
        (group,) = orchestrator.grouping.groups
        (spare,) = orchestrator.grouping.spares
        assert [(s.layer_start, s.layer_end) for s in group.stages] == [(0, 7), (7, 10)]
        victim = group.stages[1].worker

        tasks = [Task(f"t{i}", prompt_token_ids=tuple(range(5 + i, 20 + i))) for i in range(2)]
        dispatcher = Dispatcher(orchestrator, tasks, ByteTokenizer(256), SeedSchedule(SECRET),
                                DispatchPolicy(sequences_per_group=2, sampling=SAMPLING, max_new_tokens=40))
        running = asyncio.create_task(dispatcher.run())
        for _ in range(3000):
            if any(len(run.generated) >= 5 for run, _ in dispatcher._active.values()):
                break
            assert not running.done(), running
            await asyncio.sleep(0.01)
        await servers[victim].stop()  # the stage server goes away mid-job
        progress = await asyncio.wait_for(running, 120)

        assert progress.tasks_done == 2 and progress.tasks_failed == 0 and progress.reroutes >= 1
        repaired = orchestrator.successor(group.group_id)
        assert repaired.stages[1].worker == spare and repaired.stages[0].worker == group.stages[0].worker
        model = load_stage(model_dir)
        seeds = SeedSchedule(SECRET)
        for index, result in enumerate(sorted(progress.results, key=lambda r: r.task_id)):
            assert list(result.output_token_ids) == generate_alone(model, list(tasks[index].prompt_token_ids), seeds.seed(index + 1), 40)
        assert any(len(r.job_ids) >= 2 for r in progress.results)
    finally:
        await driver.close()
        for address, server in servers.items():
            if address != victim:
                await server.stop()


async def test_a_stage_server_refuses_an_orchestrator_it_does_not_trust(model_dir, worker_keys):
    from node.orchestration.grouping import Group, Stage
    from node.orchestration.pipeline_driver import StageFailure
    from node.orchestration.registry import WorkerRecord

    validator, impostor = SigningKey.generate(), SigningKey.generate()
    key = worker_keys[0]
    server = server_module.StageServer(key, model_dirs=[model_dir], controllers=[validator.address])
    await server.start()
    group = Group("g-test", (Stage(key.address, 0, 10, "eu", 1000.0),))
    workers = {key.address: WorkerRecord(key.address, CAPACITIES[0], "eu", server.url, 10**18, 0.0, 0.0)}
    stranger = HttpPipelineDriver(model_dir, key=impostor)
    ours = HttpPipelineDriver(model_dir, key=validator)
    try:
        with pytest.raises(StageFailure, match="HTTP 403.*untrusted_signer"):
            await stranger.prepare(group, workers)
        assert server.assignment is None
        await ours.prepare(group, workers)
        assert server.assignment is not None and server.assignment.group_id == "g-test"
        stranger._urls, stranger._assigned = dict(ours._urls), dict(ours._assigned)
        await stranger.release(group)  # refused: the stage keeps serving its group
        assert server.assignment is not None
        await ours.release(group)
        assert server.assignment is None
    finally:
        await stranger.close()
        await ours.close()
        await server.stop()
