"""`stagewise validator run --tasks FILE`'s orchestration, wired from flags, run to the end on a task file."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from node.cli.validator import parse_orchestration_flags
from node.orchestration.registry import RegistrationRefused
from node.orchestration.setup import build_orchestration, shape_of_model
from node.orchestration.tasks import TaskError, load_tasks, resolve_task_file
from node.protocol.signing import SigningKey
from node.protocol.worker_messages import make_registration
from node.validator.config import ValidatorConfig

from .conftest import CAPACITIES, ran_to_its_end
from .local_pipeline import LocalPipeline, LocalWorker


def parse(*argv: str) -> SimpleNamespace:
    return parse_orchestration_flags(list(argv))


def test_the_bundled_task_set_loads_and_its_checkers_work():
    tasks = load_tasks(resolve_task_file("arithmetic"))
    assert len(tasks) >= 50 and all(t.checker == "number" and t.answer for t in tasks)
    six_sevens = next(t for t in tasks if t.prompt.startswith("What is 6 * 7?"))
    assert six_sevens.check("The answer is 42.") is True
    assert six_sevens.check("6 * 7 = 42\n\nThis is") is True  # SmolLM2 restates the question first
    assert six_sevens.check("It is 42, or maybe 41") is False
    assert six_sevens.check("I do not know") is False
    assert next(t for t in tasks if t.answer == "1024").check("2^10 = 1,024.") is True


@pytest.mark.parametrize(
    "line, words",
    [
        ('{"prompt": "hi", "answer": "1"}', "answer and checker come together"),
        ('{"prompt": "hi", "answer": "1", "checker": "vibes"}', "checker must be one of"),
        ('{"prompt_token_ids": [], "id": "x"}', "non-empty list"),
        ('{"prompt": "a", "prompt_token_ids": [1]}', "exactly one of"),
        ('{"prompt": "a", "colour": "red"}', "unknown field(s) ['colour']"),
        ("[1]", "a task is a JSON object"),
        ("{oops", "line"),
    ],
)
def test_a_bad_task_line_is_named_with_its_line_number(tmp_path, line, words):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(TaskError) as error:
        load_tasks(path)
    assert f"{path}:2:" in str(error.value) and words in str(error.value)


def test_the_model_shape_comes_from_the_weights(model_dir):
    shape = shape_of_model(model_dir)
    assert shape.num_layers == 10
    # tiny llama: hidden 64, intermediate 128, 4 heads, 2 kv heads, fp32: q,o 64x64, k,v 64x32, mlp 3x64x128, 2 norms
    per_layer = 4 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64)
    assert shape.layer_bytes == int(per_layer * 1.25)
    assert shape.edge_bytes == 4 * (2 * 256 * 64 + 64)


async def test_tasks_from_a_file_run_on_groups_formed_from_registered_workers(tmp_path, model_dir, worker_keys):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps({"id": f"q{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i), "checker": "number"}) for i in range(4)))
    results = tmp_path / "results.jsonl"
    args = parse("--tasks", str(tasks), "--stages-per-group", "2", "--max-new-tokens", "5", "--results", str(results),
                 "--temperature", "0.7", "--regroup-interval", "0.05", "--allow-private-stage-urls")
    stakes = {k.address: 10**18 for k in worker_keys}
    node = SimpleNamespace(config=ValidatorConfig(), spec_guard=None)

    async def stakes_of(addresses):
        return {a: stakes[a] for a in addresses if a in stakes}

    node.stakes_of = stakes_of
    driver = LocalPipeline(model_dir, {k.address: LocalWorker(k.address, model_dir) for k in worker_keys})
    orchestration = build_orchestration(args, node, model_dir, driver=driver)
    for key, capacity in zip(worker_keys, CAPACITIES):
        await orchestration.orchestrator.register(make_registration(key, capacity, "eu", "http://127.0.0.1:1"))
    await orchestration.start()
    try:
        await orchestration.wait_dispatched()
    finally:
        await orchestration.stop()
    progress = orchestration.dispatcher.progress
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(line["task_id"] for line in lines) == ["q0", "q1", "q2", "q3"]
    stops = orchestration.dispatcher.policy.sampling.stop_ids
    assert all(ran_to_its_end(line["output_token_ids"], 5, stops) and line["correct"] in (True, False) for line in lines)
    tokens = sum(len(line["output_token_ids"]) for line in lines)
    assert (progress.tasks_done, progress.checked, progress.tokens) == (4, 4, tokens)
    # the node now refuses bundles of jobs this orchestrator did not issue (I1)
    issued = {job for line in lines for job in line["job_ids"]}
    assert len(orchestration.issued) == len(issued) == 4
    assert node.spec_guard is not None


async def test_the_spec_guard_refuses_jobs_the_orchestrator_did_not_issue():
    from node.protocol.job import JobSpec, SamplingParams, StageAssignment
    from node.validator.issued_jobs import IssuedJobs

    issued = IssuedJobs()
    spec = JobSpec("0x" + "ab" * 32, (1, 2, 3), SamplingParams(), 7, "g-1", (StageAssignment("0x" + "11" * 20, 0, 4),))
    forged = JobSpec("0x" + "ab" * 32, (1, 2, 3), SamplingParams(), 8, "g-1", (StageAssignment("0x" + "11" * 20, 0, 4),))
    await issued.record(spec)
    assert await issued.guard(spec) is None
    assert "not issued" in await issued.guard(forged)


async def test_the_issued_job_record_is_bounded():
    from node.protocol.job import JobSpec, SamplingParams, StageAssignment
    from node.validator.issued_jobs import IssuedJobs

    issued = IssuedJobs(limit=3)
    specs = [JobSpec("0x" + "ab" * 32, (1,), SamplingParams(), seed, "g", (StageAssignment("0x" + "11" * 20, 0, 1),)) for seed in range(5)]
    for spec in specs:
        await issued.record(spec)
    assert len(issued) == 3 and specs[0].job_id_hex not in issued and specs[4].job_id_hex in issued


async def test_the_guard_accepts_jobs_the_shared_ledger_awaits_and_refuses_the_rest():
    from node.orchestration.setup import _spec_guard
    from node.protocol.job import JobSpec, SamplingParams, StageAssignment
    from node.validator.issued_jobs import IssuedJobs

    def spec(seed):
        return JobSpec("0x" + "ab" * 32, (1,), SamplingParams(), seed, "g", (StageAssignment("0x" + "11" * 20, 0, 1),))

    awaited = {spec(1).job_id_hex: SimpleNamespace(status="awaiting"), spec(2).job_id_hex: SimpleNamespace(status="done")}

    async def job(job_id):
        return awaited.get(job_id)

    guard = _spec_guard(SimpleNamespace(ledger=SimpleNamespace(job=job)), IssuedJobs())
    assert await guard(spec(1)) is None  # issued before a restart, or by another validator on this ledger
    assert "not issued" in await guard(spec(2))
    assert "not issued" in await guard(spec(3))


async def test_a_worker_staking_less_than_a_slash_cannot_register_on_a_default_validator(model_dir):
    # The attack (issue 15, item 3): stake 1 wei, register, cheat; the old default minimum was 1 wei.
    poor, rich = SigningKey.generate(), SigningKey.generate()
    stakes = {poor.address: 1, rich.address: 10**18}

    async def stakes_of(addresses):
        return {a: stakes[a] for a in addresses if a in stakes}

    node = SimpleNamespace(config=ValidatorConfig(), spec_guard=None, stakes_of=stakes_of)
    args = parse("--allow-private-stage-urls")
    orchestrator = build_orchestration(args, node, model_dir, driver=LocalPipeline(model_dir, {rich.address: LocalWorker(rich.address, model_dir)})).orchestrator
    with pytest.raises(RegistrationRefused) as refused:
        await orchestrator.register(make_registration(poor, CAPACITIES[0], "eu", "http://127.0.0.1:1"))
    assert refused.value.code == "insufficient_stake"
    assert (await orchestrator.register(make_registration(rich, CAPACITIES[0], "eu", "http://127.0.0.1:1"))).address == rich.address


def test_validator_run_prefers_a_three_stage_pipeline_unless_told_otherwise(model_dir):
    node = SimpleNamespace(config=ValidatorConfig(), spec_guard=None)
    default = build_orchestration(parse(), node, model_dir, driver=LocalPipeline(model_dir, {}))
    assert default.orchestrator.policy.preferred_stages == 3 and default.orchestrator.policy.stages_per_group is None
    asked = build_orchestration(parse("--stages-per-group", "2"), node, model_dir, driver=LocalPipeline(model_dir, {}))
    assert asked.orchestrator.policy.stages_per_group == 2


async def test_a_validator_of_two_models_builds_one_orchestration_per_model_and_every_one_runs_every_task(
        tmp_path, model_dir, worker_keys):
    """`validator run --model-dir A --model-dir B --tasks F --samples-per-task 2`: one orchestrator per model,
    each dispatching every task twice, with one seed schedule and one record of issued jobs between them."""
    from node.orchestration.models import ModelOrchestrators
    from node.orchestration.setup import build_orchestrations
    from node.pipeline.tiny import tiny_model_dir
    from node.pipeline.weights import model_id

    qwen_dir = tiny_model_dir("qwen2", seed=9, path=tmp_path / "qwen2", num_layers=4)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps({"id": f"q{i}", "prompt": f"{i} + {i}?", "answer": str(2 * i), "checker": "number"})
                               for i in range(3)))
    args = parse("--tasks", str(tasks), "--samples-per-task", "2")
    node = SimpleNamespace(config=ValidatorConfig(), spec_guard=None, chain_key=SigningKey(b"\x55" * 32))
    built = build_orchestrations(args, node, [model_dir, qwen_dir])
    assert [o.orchestrator.model_id for o in built] == [model_id(model_dir), model_id(qwen_dir)]
    assert [o.dispatcher.progress.tasks_total for o in built] == [6, 6]
    assert built[0].dispatcher.seeds is built[1].dispatcher.seeds and built[0].issued is built[1].issued
    assert node.spec_guard is not None
    for orchestration in built:
        await orchestration.orchestrator.driver.close()
    assert ModelOrchestrators([o.orchestrator for o in built]).of_model(model_id(qwen_dir)) is built[1].orchestrator
