"""The orchestrator end to end, in process: workers register, groups form, tasks run, a stage dies."""

from __future__ import annotations

import pytest
import torch

from node.orchestration.dispatch import Dispatcher, DispatchPolicy, SeedSchedule
from node.orchestration.grouping import GroupingPolicy, ModelShape
from node.orchestration.orchestrator import Orchestrator
from node.orchestration.pipeline_driver import StageFailure
from node.orchestration.registry import Registry, RegistryPolicy, stake_lookup
from node.orchestration.tasks import ByteTokenizer, Task
from node.pipeline.weights import load_stage, model_id
from node.protocol.job import SamplingParams
from node.protocol.worker_messages import make_heartbeat, make_registration
from node.toploc.sampling import sample_next

from .conftest import CAPACITIES, MIB
from .local_pipeline import LocalPipeline, LocalWorker

SAMPLING = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=12, stop_ids=())
SECRET = b"orchestration-test-secret-32-bytes"
SHAPE = ModelShape(num_layers=10, layer_bytes=4 * MIB)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def start(model_dir, worker_keys, policy=GroupingPolicy(stages_per_group=2), clock=None):
    clock = clock or Clock()
    registry = Registry(
        stake_lookup({k.address: 10**18 for k in worker_keys}), RegistryPolicy(heartbeat_timeout_s=30), clock
    )
    workers = {k.address: LocalWorker(k.address, model_dir) for k in worker_keys}
    driver = LocalPipeline(model_dir, workers)
    orchestrator = Orchestrator(registry, driver, model_id(model_dir), SHAPE, policy)
    for key, capacity in zip(worker_keys, CAPACITIES):
        await orchestrator.register(make_registration(key, capacity, "eu", f"http://127.0.0.1:{9000}", now=clock.now))
    return orchestrator, workers, clock


def tasks(count: int = 6) -> list[Task]:
    return [Task(f"t{i}", prompt_token_ids=tuple(range(3 + i, 10 + 2 * i))) for i in range(count)]


def generate_alone(model_dir, prompt, seed) -> list[int]:
    """The reference: the whole model in one piece, token by token, same sampler and seed."""
    model = load_stage(model_dir)
    cache = model.new_cache()
    hidden = model(torch.tensor(prompt), [cache])
    out = []
    for position in range(len(prompt), len(prompt) + SAMPLING.max_new_tokens):
        token = int(sample_next(model.logits(hidden[-1:]), SAMPLING, seed, torch.tensor([position]))[0])
        out.append(token)
        hidden = model(torch.tensor([token]), [cache])
    return out


async def run_tasks(orchestrator, sequences_per_group=2):
    dispatcher = Dispatcher(
        orchestrator, tasks(), ByteTokenizer(256), SeedSchedule(SECRET),
        DispatchPolicy(sequences_per_group=sequences_per_group, sampling=SAMPLING, max_new_tokens=12),
    )
    progress = await dispatcher.run()
    return {r.task_id: r for r in progress.results}, progress


async def test_five_unequal_workers_form_groups_that_cover_every_layer_in_proportion(model_dir, worker_keys):
    orchestrator, _, _ = await start(model_dir, worker_keys)
    groups = orchestrator.grouping.groups
    assert len(groups) == 2 and len(orchestrator.grouping.spares) == 1
    for group in groups:
        assert group.stages[0].layer_start == 0 and group.stages[-1].layer_end == 10
        assert all(a.layer_end == b.layer_start for a, b in zip(group.stages, group.stages[1:]))
        fast, slow = group.stages  # fastest first
        assert fast.num_layers >= slow.num_layers
        share = fast.layer_tokens_per_s / (fast.layer_tokens_per_s + slow.layer_tokens_per_s)
        assert abs(fast.num_layers - 10 * share) <= 1
    assignment = orchestrator.assignment(groups[0].stages[1].worker).to_json()
    assert assignment["status"] == "assigned" and assignment["stage_index"] == 1
    assert orchestrator.assignment(orchestrator.grouping.spares[0]).to_json()["status"] == "spare"


async def test_tasks_run_on_every_group_with_orchestrator_seeds_and_the_tokens_of_the_whole_model(model_dir, worker_keys):
    orchestrator, _, _ = await start(model_dir, worker_keys)
    results, progress = await run_tasks(orchestrator)
    assert progress.tasks_done == 6 and progress.tokens == 6 * 12 and progress.reroutes == 0
    assert {g for r in results.values() for g in r.groups} == {g.group_id for g in orchestrator.grouping.groups}
    seeds = SeedSchedule(SECRET)
    for i, task in enumerate(tasks()):
        assert list(results[task.task_id].output_token_ids) == generate_alone(model_dir, task.prompt_token_ids, seeds.seed(i + 1))


async def test_groups_take_turns_so_a_few_tasks_spread_over_every_group(model_dir, worker_keys):
    orchestrator, _, _ = await start(model_dir, worker_keys)
    dispatcher = Dispatcher(
        orchestrator, tasks(2), ByteTokenizer(256), SeedSchedule(SECRET),
        DispatchPolicy(sequences_per_group=4, wait_for_groups=2, sampling=SAMPLING, max_new_tokens=4),
    )
    progress = await dispatcher.run()
    assert sorted(g for r in progress.results for g in r.groups) == sorted(g.group_id for g in orchestrator.grouping.groups)


async def test_killing_a_stage_mid_job_reroutes_to_a_spare_and_the_tokens_do_not_change(model_dir, worker_keys):
    reference, _ = await run_tasks((await start(model_dir, worker_keys))[0])

    orchestrator, workers, _ = await start(model_dir, worker_keys)
    before = orchestrator.grouping
    victim_group = before.groups[0]
    victim = victim_group.stages[1].worker
    workers[victim].kill_after_steps = 9  # dies after a few decode steps of its first sequences
    results, progress = await run_tasks(orchestrator)

    assert progress.tasks_done == 6 and progress.tasks_failed == 0
    assert {t: r.output_token_ids for t, r in results.items()} == {t: r.output_token_ids for t, r in reference.items()}
    rerouted = [r for r in results.values() if r.reroutes]
    assert rerouted and all(len(r.job_ids) == len(r.groups) >= 2 for r in rerouted)
    # the group kept its layer ranges and got the spare in the dead worker's place
    repaired = orchestrator.successor(victim_group.group_id)
    assert repaired is not None and repaired.group_id != victim_group.group_id
    assert [(s.layer_start, s.layer_end) for s in repaired.stages] == [(s.layer_start, s.layer_end) for s in victim_group.stages]
    assert repaired.stages[1].worker == before.spares[0] and repaired.stages[0].worker == victim_group.stages[0].worker
    assert orchestrator.registry.get(victim) is None
    assert all(r.groups[-1] == repaired.group_id for r in rerouted)


async def test_a_continuation_job_names_the_replacement_and_carries_the_history_as_prompt(model_dir, worker_keys):
    orchestrator, workers, _ = await start(model_dir, worker_keys, policy=GroupingPolicy(stages_per_group=4))
    (group,) = orchestrator.grouping.groups
    spare = orchestrator.grouping.spares[0]
    workers[group.stages[2].worker].kill_after_steps = 6
    specs = []

    async def record(spec):
        specs.append(spec)

    dispatcher = Dispatcher(
        orchestrator, tasks(1), ByteTokenizer(256), SeedSchedule(SECRET),
        DispatchPolicy(sequences_per_group=1, sampling=SAMPLING, max_new_tokens=12), on_job=record,
    )
    (result,) = (await dispatcher.run()).results
    first, second = specs
    assert second.seed == first.seed  # I1: the orchestrator's seed, unchanged by rerouting
    done = len(second.prompt_token_ids) - len(first.prompt_token_ids)
    assert 0 < done < 12
    assert second.prompt_token_ids == first.prompt_token_ids + result.output_token_ids[:done]
    assert second.sampling.max_new_tokens == 12 - done
    assert second.stages[2].worker == spare and second.stages[:2] == first.stages[:2]
    assert result.job_ids == (first.job_id_hex, second.job_id_hex)


async def test_a_worker_that_stops_heartbeating_is_dropped_from_assignment(model_dir, worker_keys):
    orchestrator, _, clock = await start(model_dir, worker_keys)
    silent = orchestrator.grouping.groups[1].stages[0].worker
    for _ in range(4):
        clock.now += 10
        for key in worker_keys:
            if key.address != silent:
                await orchestrator.heartbeat(make_heartbeat(key, now=clock.now))
        await orchestrator.refresh()
    assert orchestrator.assignment(silent).group is None
    assert silent not in {w for g in orchestrator.grouping.groups for w in g.workers}
    assert len(orchestrator.grouping.groups) == 2  # the spare took its place
    assert orchestrator.grouping.spares == ()


class LyingPipeline(LocalPipeline):
    """The last stage reports a made-up token, then drops out: the history must not be trusted blindly."""

    lied = False

    async def run(self, group, spec, on_tokens):
        if self.lied:
            return await super().run(group, spec, on_tokens)
        seen = []

        def sink(ids):
            seen.extend(ids)
            on_tokens(ids)
            if len(seen) == 4:
                self.lied = True
                on_tokens([(ids[-1] + 1) % 256, 7, 7])
                raise StageFailure(group.stages[-1].worker, "went away")

        return await super().run(group, spec, sink)


async def test_a_history_with_injected_tokens_is_cut_at_the_first_bad_one(model_dir, worker_keys):
    from node.orchestration.rerouting import verified_prefix
    from node.pipeline.weights import load_stage

    reference, _ = await run_tasks((await start(model_dir, worker_keys))[0])
    orchestrator, workers, _ = await start(model_dir, worker_keys)
    orchestrator.driver = LyingPipeline(model_dir, workers)
    model = load_stage(model_dir)
    checked = []

    async def check(run, sampling):
        kept = verified_prefix(model, run, sampling)
        checked.append((len(run.generated), kept))
        return kept

    dispatcher = Dispatcher(
        orchestrator, tasks(), ByteTokenizer(256), SeedSchedule(SECRET),
        DispatchPolicy(sequences_per_group=2, sampling=SAMPLING, max_new_tokens=12), history_check=check,
    )
    progress = await dispatcher.run()
    assert checked and all(entry == (7, 4) for entry in checked)  # 4 honest tokens kept, 3 injected cut
    assert {r.task_id: r.output_token_ids for r in progress.results} == {t: r.output_token_ids for t, r in reference.items()}


async def test_every_group_is_kept_full_with_two_sequences_per_stage_by_default(model_dir, worker_keys):
    orchestrator, _, _ = await start(model_dir, worker_keys)
    dispatcher = Dispatcher(orchestrator, tasks(12), ByteTokenizer(256), SeedSchedule(SECRET),
                            DispatchPolicy(sampling=SAMPLING, max_new_tokens=3))
    peak: dict[str, int] = {}
    original = orchestrator.driver.run

    async def counting(group, spec, on_tokens):
        load = sum(1 for _, g in dispatcher._active.values() if g == group.group_id)
        peak[group.group_id] = max(peak.get(group.group_id, 0), load)
        return await original(group, spec, on_tokens)

    orchestrator.driver.run = counting
    progress = await dispatcher.run()
    assert progress.tasks_done == 12
    assert peak == {g.group_id: 4 for g in orchestrator.grouping.groups}  # 2 stages each: 4 in flight


async def test_a_worker_that_registers_again_restarted_and_its_group_is_prepared_afresh(model_dir, worker_keys):
    orchestrator, workers, clock = await start(model_dir, worker_keys)
    group = orchestrator.grouping.groups[0]
    restarted = group.stages[0].worker
    key = next(k for k in worker_keys if k.address == restarted)
    prepared_before = list(orchestrator.driver.prepared)
    await orchestrator.register(make_registration(key, CAPACITIES[worker_keys.index(key)], "eu", "http://127.0.0.1:9000", now=clock.now + 1))
    assert group.group_id in orchestrator.driver.released
    assert orchestrator.driver.prepared[len(prepared_before):]  # its (new) group was prepared again
    assert orchestrator.assignment(restarted).group is not None
    assert len(orchestrator.grouping.groups) == 2


async def test_a_worker_whose_stake_fell_below_the_minimum_is_given_no_job_and_is_dropped(model_dir, worker_keys):
    # The attack: stake enough to register, withdraw (or be slashed) down to 1 wei, keep serving. A slash is
    # capped at the stake left, so a proven fault would cost the worker nothing.
    stakes = {k.address: 10**18 for k in worker_keys}

    class Stakes:
        def stake_of(self, address: str) -> int:
            return stakes[address]

    clock = Clock()
    registry = Registry(stake_lookup(Stakes()), RegistryPolicy(min_stake_wei=10**17, heartbeat_timeout_s=30), clock)
    workers = {k.address: LocalWorker(k.address, model_dir) for k in worker_keys}
    orchestrator = Orchestrator(registry, LocalPipeline(model_dir, workers), model_id(model_dir), SHAPE,
                                GroupingPolicy(stages_per_group=2))
    for key, capacity in zip(worker_keys, CAPACITIES):
        await orchestrator.register(make_registration(key, capacity, "eu", "http://127.0.0.1:9000", now=clock.now))
    leaver = orchestrator.grouping.groups[0].stages[0].worker
    stakes[leaver] = 1
    results, _ = await run_tasks(orchestrator)
    assert all(result.error is None for result in results.values())
    assert workers[leaver].steps == 0  # no job ever reached it
    assert registry.get(leaver) is None


async def test_a_task_counts_as_done_only_when_its_job_was_accepted_and_a_blamed_one_runs_again(model_dir, worker_keys):
    # Issue 18, item 1: tasks whose every job was blamed were counted done and written to the results.
    orchestrator, _, _ = await start(model_dir, worker_keys)
    firsts: set[str] = set()  # the first job of every task is blamed, the rerun accepted
    verdicts: dict[str, str] = {}
    asked: list[str] = []

    async def verdict_of(job_id: str) -> str | None:
        asked.append(job_id)
        if asked.count(job_id) < 2:
            return None  # the verdict lands a moment after the job ends
        return verdicts.setdefault(job_id, "blamed" if job_id in firsts else "accepted")

    async def on_job(spec) -> None:
        if spec.attempt == 0:
            firsts.add(spec.job_id_hex)

    dispatcher = Dispatcher(
        orchestrator, tasks(3), ByteTokenizer(256), SeedSchedule(SECRET),
        DispatchPolicy(sampling=SAMPLING, max_new_tokens=12, idle_poll_s=0.01), on_job=on_job, verdict_of=verdict_of,
    )
    progress = await dispatcher.run()
    results = {r.task_id: r for r in progress.results}
    assert progress.tasks_done == 3 and sorted(results) == ["t0", "t1", "t2"]
    for result in results.values():
        assert result.error is None and result.reroutes == 1 and len(result.output_token_ids) == 12
        assert len(result.job_ids) == 2 and result.job_ids[0] in firsts and verdicts[result.job_ids[1]] == "accepted"


async def test_a_second_process_with_the_same_key_is_refused_while_the_first_one_serves(model_dir, worker_keys):
    # Issue 18, item 5: a second worker with the same key took over the registration silently, and once it
    # stopped, /v1/groups listed its dead URL as healthy.
    from node.orchestration.registry import RegistrationRefused
    from node.orchestration.setup import stage_answers_as
    from node.pipeline.server import StageServer

    clock = Clock()
    registry = Registry(stake_lookup({k.address: 10**18 for k in worker_keys}), RegistryPolicy(heartbeat_timeout_s=30), clock)
    key = worker_keys[0]
    driver = LocalPipeline(model_dir, {key.address: LocalWorker(key.address, model_dir)})
    orchestrator = Orchestrator(registry, driver, model_id(model_dir), SHAPE, stage_alive=stage_answers_as)
    first = StageServer(key)
    await first.start()
    try:
        await orchestrator.register(make_registration(key, CAPACITIES[0], "eu", first.url, now=clock.now))
        with pytest.raises(RegistrationRefused) as refused:
            await orchestrator.register(make_registration(key, CAPACITIES[0], "eu", "http://127.0.0.1:9", now=clock.now))
        assert refused.value.code == "already_running" and first.url in str(refused.value)
        assert registry.get(key.address).stage_url == first.url
    finally:
        await first.stop()
    record = await orchestrator.register(make_registration(key, CAPACITIES[0], "eu", "http://127.0.0.1:9", now=clock.now))
    assert record.stage_url == "http://127.0.0.1:9"  # the first one is gone: the restart is welcome


async def test_samples_per_task_runs_each_task_k_times_and_hands_over_only_accepted_outputs(model_dir, worker_keys):
    orchestrator, _, _ = await start(model_dir, worker_keys)
    blamed: set[str] = set()
    recorded = []

    async def verdict_of(job_id: str) -> str | None:
        if not blamed:
            blamed.add(job_id)  # the first job to finish is blamed: its output must never become a row
        return "blamed" if job_id in blamed else "accepted"

    async def on_sample(record) -> None:
        recorded.append(record)

    two = [Task("t0", prompt="hi", answer="3", checker="math", source="gen:linear:n=2:seed=1"),
           Task("t1", prompt_token_ids=(4, 5, 6), source="file.jsonl")]
    dispatcher = Dispatcher(
        orchestrator, two, ByteTokenizer(256), SeedSchedule(SECRET),
        DispatchPolicy(sampling=SAMPLING, max_new_tokens=6, idle_poll_s=0.01, samples_per_task=3),
        verdict_of=verdict_of, on_sample=on_sample,
    )
    progress = await dispatcher.run()
    assert progress.tasks_total == 6 and progress.tasks_done == 6
    assert sorted(r.task_id for r in recorded) == ["t0"] * 3 + ["t1"] * 3
    assert len({r.seed for r in recorded}) == 6  # every sample its own orchestrator seed
    assert not blamed & {r.job_id for r in recorded}
    first = next(r for r in recorded if r.task_id == "t0")
    assert first.prompt_text == "hi" and first.checker == "math" and first.task_source == "gen:linear:n=2:seed=1"
    assert first.correct in (True, False) and first.model_id == orchestrator.model_id
    assert len(first.completion_token_ids) == 6 and first.sampling["max_new_tokens"] == 6
    assert next(r for r in recorded if r.task_id == "t1").correct is None  # no checker, no verdict on it


async def test_a_worker_whose_device_cannot_compute_the_declared_precision_is_never_grouped(model_dir, worker_keys):
    """PROTOCOL I8: the validator declares bf16 for its model. A worker that offers fp32 only (an older GPU, or
    an operator who says so) is refused at registration, and one that offers bf16 is grouped; the jobs the
    dispatcher issues declare bf16."""
    from node.orchestration.registry import RegistrationRefused

    clock = Clock()
    registry = Registry(stake_lookup({k.address: 10**18 for k in worker_keys}), RegistryPolicy(heartbeat_timeout_s=30), clock)
    driver = LocalPipeline(model_dir, {k.address: LocalWorker(k.address, model_dir) for k in worker_keys})
    orchestrator = Orchestrator(registry, driver, model_id(model_dir), SHAPE, GroupingPolicy(stages_per_group=2),
                                precision="bf16")
    fp32_only = make_registration(worker_keys[0], CAPACITIES[0], "eu", "http://127.0.0.1:9000", now=clock.now)
    with pytest.raises(RegistrationRefused, match="compute in bf16") as refused:
        await orchestrator.register(fp32_only)
    assert refused.value.code == "unsupported_precision" and registry.get(worker_keys[0].address) is None
    for key, capacity in zip(worker_keys[1:3], CAPACITIES[1:3]):
        await orchestrator.register(make_registration(key, capacity, "eu", "http://127.0.0.1:9000", now=clock.now,
                                                      device="cuda", precisions=("fp32", "bf16")))
    await orchestrator.refresh()
    grouped = {s.worker for g in orchestrator.grouping.groups for s in g.stages}
    assert grouped == {worker_keys[1].address, worker_keys[2].address}
    assert registry.get(worker_keys[1].address).to_json()["precisions"] == ["fp32", "bf16"]
