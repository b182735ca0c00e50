"""A new orchestrator goes on with the task list where the last one stopped (issue 19), on SQLite and
PostgreSQL: the tasks it finished are not run again, and no seed it issued is issued again (I1: a worker has
seen those)."""

from __future__ import annotations

import asyncio

import pytest

from ledger.orchestrator_state import load_dispatch_progress
from ledger.store import Ledger
from node.orchestration.dispatch import Dispatcher, DispatchPolicy, SeedSchedule
from node.orchestration.saved_dispatch import FinishedTasks, SavedDispatch, tasks_digest
from node.orchestration.tasks import ByteTokenizer

from .test_orchestration import SAMPLING, SECRET, start, tasks


@pytest.fixture
async def ledger(db_url):
    async with await Ledger.open(db_url) as ledger:
        yield ledger


class SeedLog:
    """on_job: every job's task and seed, in issue order; past `issue_at_most` jobs, none is issued (the hook
    never returns), so a test can stop an orchestrator part way through its list."""

    def __init__(self, issue_at_most: int | None = None) -> None:
        self.jobs: list[tuple[str, int]] = []
        self.issue_at_most = issue_at_most

    async def __call__(self, spec) -> None:
        if self.issue_at_most is not None and len(self.jobs) >= self.issue_at_most:
            await asyncio.Event().wait()
        self.jobs.append((spec.prompt_token_ids, spec.seed))


def dispatcher_on(ledger, orchestrator, count, on_job, seed_block=4) -> Dispatcher:
    """What `validator run --tasks` builds for a term as orchestrator: fresh objects over the same ledger and
    the same seed secret."""
    return Dispatcher(
        orchestrator, tasks(count), ByteTokenizer(256), SeedSchedule(SECRET),
        DispatchPolicy(sequences_per_group=1, sampling=SAMPLING, max_new_tokens=4), on_job=on_job,
        saved=SavedDispatch(ledger, orchestrator.model_id, seed_block=seed_block, save_every_s=0.01),
    )


async def test_a_takeover_runs_only_the_tasks_not_yet_finished_with_seeds_never_issued_before(
    ledger, model_dir, worker_keys
):
    orchestrator, _, _ = await start(model_dir, worker_keys)
    first_jobs = SeedLog(issue_at_most=12)
    first = dispatcher_on(ledger, orchestrator, 40, first_jobs)
    running = asyncio.create_task(first.run())
    saved = await load_dispatch_progress(ledger, orchestrator.model_id)
    while not saved.finished or saved.finished["tasks_done"] < 5:  # periodic saves land as tasks finish
        await asyncio.sleep(0.01)
        saved = await load_dispatch_progress(ledger, orchestrator.model_id)
    running.cancel()  # the lease is lost (or the process killed): no last save
    await asyncio.gather(running, return_exceptions=True)
    saved = await load_dispatch_progress(ledger, orchestrator.model_id)
    finished_before = FinishedTasks.from_json(saved.finished["positions"])
    assert 5 <= saved.finished["tasks_done"] <= 12 and saved.seeds_reserved >= len(first_jobs.jobs)

    second_jobs = SeedLog()
    second = dispatcher_on(ledger, orchestrator, 40, second_jobs)
    progress = await second.run()
    assert progress.tasks_done == 40 and progress.tasks_total == 40
    prompts = [t.prompt_token_ids for t in tasks(40)]
    run_again = {prompt for prompt, _ in second_jobs.jobs}
    assert not any(prompts[p] in run_again for p in range(40) if p in finished_before)
    assert run_again == {prompts[p] for p in range(40) if p not in finished_before}
    assert not {seed for _, seed in first_jobs.jobs} & {seed for _, seed in second_jobs.jobs}
    assert FinishedTasks.from_json((await load_dispatch_progress(ledger, orchestrator.model_id)).finished["positions"]) \
        == FinishedTasks(below=40)
    third_jobs = SeedLog()  # and the one after that finds nothing left to do
    progress = await dispatcher_on(ledger, orchestrator, 40, third_jobs).run()
    assert third_jobs.jobs == [] and progress.tasks_done == 40 and progress.finished_at is not None


async def test_another_task_list_starts_from_its_first_task_and_still_never_reuses_a_seed(ledger, model_dir, worker_keys):
    orchestrator, _, _ = await start(model_dir, worker_keys)
    first_jobs, second_jobs = SeedLog(), SeedLog()
    await dispatcher_on(ledger, orchestrator, 3, first_jobs).run()
    progress = await dispatcher_on(ledger, orchestrator, 5, second_jobs).run()  # another --tasks
    assert progress.tasks_done == 5 and len(second_jobs.jobs) == 5
    assert not {seed for _, seed in first_jobs.jobs} & {seed for _, seed in second_jobs.jobs}
    saved = await load_dispatch_progress(ledger, orchestrator.model_id)
    assert saved.tasks_digest == tasks_digest(tasks(5))


def test_finished_positions_are_kept_as_a_prefix_and_the_few_beyond_it():
    finished = FinishedTasks()
    for position in (0, 2, 1, 5):
        finished.add(position)
    assert finished.to_json() == {"below": 3, "above": [5]}
    assert [p for p in range(7) if p in finished] == [0, 1, 2, 5]
    assert FinishedTasks.from_json(finished.to_json()) == finished
