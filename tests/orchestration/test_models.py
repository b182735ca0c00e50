"""A validator serving two models (a tiny Llama and a tiny Qwen2): workers register for the model their stage
serves, groups form per model, and every task's k samples run on each model, so each task gets a pass rate
per model (issue 17)."""

from __future__ import annotations

import asyncio

import pytest

from node.orchestration.dispatch import Dispatcher, DispatchPolicy, SeedSchedule
from node.orchestration.grouping import GroupingPolicy, ModelShape
from node.orchestration.models import ModelOrchestrators
from node.orchestration.orchestrator import Orchestrator
from node.orchestration.registry import RegistrationRefused, Registry, RegistryPolicy, stake_lookup
from node.orchestration.tasks import ByteTokenizer, Task
from node.pipeline.tiny import tiny_model_dir
from node.pipeline.weights import model_id
from node.protocol.job import SamplingParams
from node.protocol.worker_messages import make_registration, parse_signed_registration

from .conftest import CAPACITIES, MIB
from .local_pipeline import LocalPipeline, LocalWorker

NOW = 1_800_000_000.0
SAMPLING = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=4, stop_ids=())


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return tiny_model_dir("qwen2", seed=9, path=tmp_path_factory.mktemp("tiny-qwen2"), num_layers=10)


def orchestrator_for(model_dir, keys) -> Orchestrator:
    registry = Registry(stake_lookup({k.address: 10**18 for k in keys}), RegistryPolicy(heartbeat_timeout_s=30),
                        lambda: NOW)
    driver = LocalPipeline(model_dir, {k.address: LocalWorker(k.address, model_dir) for k in keys})
    return Orchestrator(registry, driver, model_id(model_dir), ModelShape(num_layers=10, layer_bytes=4 * MIB),
                        GroupingPolicy(stages_per_group=2))


def test_a_registration_names_its_model_in_what_it_signs_and_an_older_one_signs_as_before(worker_keys, model_dir):
    named = make_registration(worker_keys[0], CAPACITIES[0], "eu", "http://127.0.0.1:9000", now=NOW,
                              model_id=model_id(model_dir))
    assert parse_signed_registration(named.to_json()).message.model_id == model_id(model_dir)
    older = make_registration(worker_keys[0], CAPACITIES[0], "eu", "http://127.0.0.1:9000", now=NOW)
    assert b"model_id" not in older.message.canonical_bytes() and older.message.model_id is None
    forged = named.to_json()
    forged["message"]["model_id"] = "0x" + "11" * 32  # another model under the same signature
    with pytest.raises(Exception, match="signature"):
        parse_signed_registration(forged)


async def test_each_model_groups_its_own_workers_and_runs_every_task_k_times(model_dir, qwen_dir, worker_keys):
    llama, qwen = model_id(model_dir), model_id(qwen_dir)
    routes = ModelOrchestrators([orchestrator_for(model_dir, worker_keys[:2]), orchestrator_for(qwen_dir, worker_keys[2:4])])
    for key, capacity, model in zip(worker_keys[:4], CAPACITIES, (llama, llama, qwen, qwen)):
        signed = make_registration(key, capacity, "eu", "http://127.0.0.1:9000", now=NOW, model_id=model)
        await routes.for_registration(signed).register(signed)
    stray = make_registration(worker_keys[4], CAPACITIES[4], "eu", "http://127.0.0.1:9000", now=NOW, model_id=qwen)
    with pytest.raises(RegistrationRefused) as wrong:  # a qwen2 stage sent to the llama orchestrator
        await routes.of_model(llama).register(stray)
    assert wrong.value.code == "unknown_model"
    with pytest.raises(RegistrationRefused, match="not model 0x0000"):
        routes.of_model("0x" + "00" * 32)
    for orchestrator in routes.all:
        await orchestrator.refresh()
    grouped = {o.model_id: {s.worker for g in o.grouping.groups for s in g.stages} for o in routes.all}
    assert grouped == {llama: {k.address for k in worker_keys[:2]}, qwen: {k.address for k in worker_keys[2:4]}}
    assert routes.of_worker(worker_keys[3].address).model_id == qwen

    recorded = []

    async def on_sample(record) -> None:
        recorded.append(record)

    async def accepted(job_id: str) -> str:
        return "accepted"

    seeds = SeedSchedule(b"two-models-test-secret-32-bytes!")  # one schedule: no two jobs share a seed
    two = [Task("t0", prompt="hi", answer="3", checker="math", source="gen:linear:n=2:seed=1"),
           Task("t1", prompt="yo", answer="4", checker="math", source="gen:linear:n=2:seed=1")]
    dispatchers = [Dispatcher(o, two, ByteTokenizer(256), seeds,
                              DispatchPolicy(sampling=SAMPLING, max_new_tokens=4, idle_poll_s=0.01, samples_per_task=2),
                              verdict_of=accepted, on_sample=on_sample) for o in routes.all]
    await asyncio.gather(*(d.run() for d in dispatchers))
    per_pair: dict[tuple[str, str], int] = {}
    for record in recorded:
        per_pair[(record.task_id, record.model_id)] = per_pair.get((record.task_id, record.model_id), 0) + 1
    assert per_pair == {(t, m): 2 for t in ("t0", "t1") for m in (llama, qwen)}
    assert len({r.seed for r in recorded}) == 8 and len({r.job_id for r in recorded}) == 8
