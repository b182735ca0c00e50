"""Stopping a worker (what SIGTERM does: `Worker.run` returns through `shutdown`) while its group runs jobs, over
real parts: the embedded chain, the validator's orchestrator and HTTP pipeline driver, in-process workers with
their own stage servers, the dispatcher. Issue 18, item 3: the healthy stages must keep their stage, and the
group must be repaired with the spare in the leaver's place with the same layer range."""

from __future__ import annotations

import asyncio
import gc
import logging

import aiohttp
import pytest

from node.orchestration.dispatch import DispatchPolicy, Dispatcher, SeedSchedule
from node.orchestration.tasks import Task
from node.protocol.job import SamplingParams
from node.worker.config import WorkerConfig
from node.worker.run import Worker

from .test_end_to_end import open_stack, wait_for

pytestmark = pytest.mark.slow


class Tokens:
    def encode_prompt(self, text):
        return [1, 5, 9]

    def decode(self, token_ids):
        return " ".join(map(str, token_ids))


class Running:
    """Workers started as `stagewise worker run` starts them, each stopped through its own stop event."""

    def __init__(self, stack, session) -> None:
        self.stack, self.session = stack, session
        self.workers: dict[str, tuple[Worker, asyncio.Event, asyncio.Task]] = {}
        self.calls: dict[str, list[tuple[str, str | None]]] = {}

    async def start(self, key, load_s: float = 0.0) -> Worker:
        """`load_s`: how long taking an assignment takes (a real model's layers load for seconds)."""
        path, password = self.stack.keystore(key)
        config = WorkerConfig(keystore=path, validator_url=self.stack.url, password_file=password,
                              model_dirs=(self.stack.model_dir,), memory_bytes=1 << 30, heartbeat_s=0.5, grace_s=2,
                              layer_tokens_per_s=1000.0)
        worker = Worker(config, key, self.session)
        await worker.start()
        self._watch(worker, load_s)
        stop = asyncio.Event()
        self.workers[key.address] = (worker, stop, asyncio.create_task(worker.run(stop)))
        return worker

    def _watch(self, worker: Worker, load_s: float) -> None:
        """Record what the stage server is told: every assignment (its group) and every release."""
        calls = self.calls.setdefault(worker.key.address, [])
        server = worker.server
        assign, release = server.assign, server.release

        async def assigned(assignment):
            calls.append(("assign", assignment.group_id))
            await asyncio.sleep(load_s)
            await assign(assignment)

        async def released():
            calls.append(("release", None))
            await release()

        server.assign, server.release = assigned, released

    async def stop(self, address: str) -> None:
        worker, stop, task = self.workers.pop(address)
        stop.set()  # what the SIGTERM handler does
        await asyncio.wait_for(task, 30)

    async def stop_all(self) -> None:
        for address in list(self.workers):
            await self.stop(address)


def record_driver(driver) -> tuple[list[str], list[str]]:
    prepared, released = [], []
    prepare, release = driver.prepare, driver.release

    async def recording_prepare(group, workers):
        await prepare(group, workers)
        prepared.append(group.group_id)

    async def recording_release(group):
        released.append(group.group_id)
        await release(group)

    driver.prepare, driver.release = recording_prepare, recording_release
    return prepared, released


def dispatcher_for(orchestrator, count: int, tokens: int, tasks: int | None = None) -> Dispatcher:
    """`tasks` tasks of `tokens` tokens, `count` of them in flight per group."""
    tasks = [Task(f"t{i}", prompt_token_ids=(1, 5, 9, 14, 3 + i), max_new_tokens=tokens) for i in range(tasks or count)]
    policy = DispatchPolicy(sequences_per_group=count, max_new_tokens=tokens, idle_poll_s=0.05, retry_delay_s=0.1,
                            sampling=SamplingParams(temperature=0.8))
    return Dispatcher(orchestrator, tasks, Tokens(), SeedSchedule(b"s" * 32), policy)


async def in_flight(dispatcher: Dispatcher, tokens: int = 3) -> None:
    async def started():
        return any(len(run.generated) >= tokens for run, _ in dispatcher._active.values())

    await wait_for(started, 60, "sequences in flight")


def no_leaked_tasks(caplog) -> None:
    gc.collect()  # a pending task nobody holds is reported when it is collected
    leaked = [r.getMessage() for r in caplog.records if "Task was destroyed but it is pending" in r.getMessage()]
    assert not leaked, leaked


async def test_a_stopped_stage_is_replaced_by_the_spare_with_the_same_layers_and_the_others_keep_theirs(
    tmp_path, sqlite_url, model_dir, served_chain, caplog
):
    caplog.set_level(logging.INFO)
    async with open_stack(tmp_path, sqlite_url, model_dir, served_chain, stages_per_group=3) as stack, \
            aiohttp.ClientSession() as session:
        keys = [stack.staked_key() for _ in range(4)]
        await stack.follow_chain()
        running = Running(stack, session)
        try:
            for key in keys[:3]:
                await running.start(key)
            group = await stack.group_of(keys[:3])
            await running.start(keys[3], load_s=1.5)
            await wait_for(lambda: _async(stack.orchestrator.grouping.spares == (keys[3].address,)), 30, "the spare")
            assert stack.orchestrator.grouping.groups == (group,)
            prepared, released = record_driver(stack.driver)
            for calls in running.calls.values():
                calls.clear()
            dispatcher = dispatcher_for(stack.orchestrator, 3, 300, tasks=6)
            dispatching = asyncio.create_task(dispatcher.run())
            await in_flight(dispatcher)
            leaver = group.stages[1].worker
            await running.stop(leaver)
            progress = await asyncio.wait_for(dispatching, 120)

            assert [r.error for r in progress.results] == [None] * 6
            assert all(len(r.output_token_ids) == 300 for r in progress.results)
            assert any(r.reroutes for r in progress.results)  # some were cut, and continued on the repaired group
            (repaired,) = stack.orchestrator.grouping.groups
            assert [s.worker for s in repaired.stages] == [group.stages[0].worker, keys[3].address, group.stages[2].worker]
            assert [(s.layer_start, s.layer_end) for s in repaired.stages] == [(s.layer_start, s.layer_end) for s in group.stages]
            assert (prepared, released) == ([repaired.group_id], [group.group_id])  # nothing formed and dissolved
            for stage in (group.stages[0], group.stages[2]):  # the healthy stages: moved once, never released
                assert running.calls[stage.worker] == [("assign", repaired.group_id)], running.calls
                assert f"worker {stage.worker} dropped" not in caplog.text
            assert "dissolved" not in caplog.text
            assert f"worker {leaver} left" in caplog.text  # it said so: no waiting for its heartbeat to time out
            await running.stop_all()
            no_leaked_tasks(caplog)
        finally:
            await running.stop_all()


async def test_without_a_spare_the_group_is_dissolved_and_its_survivor_waits_as_a_spare(
    tmp_path, sqlite_url, model_dir, served_chain, caplog
):
    caplog.set_level(logging.INFO)
    async with open_stack(tmp_path, sqlite_url, model_dir, served_chain, stages_per_group=2) as stack, \
            aiohttp.ClientSession() as session:
        keys = [stack.staked_key() for _ in range(3)]
        await stack.follow_chain()
        running = Running(stack, session)
        try:
            for key in keys[:2]:
                await running.start(key)
            group = await stack.group_of(keys[:2])
            survivor, leaver = group.stages[0].worker, group.stages[1].worker
            prepared, released = record_driver(stack.driver)
            running.calls[survivor].clear()
            dispatcher = dispatcher_for(stack.orchestrator, 2, 300)
            dispatching = asyncio.create_task(dispatcher.run())
            await in_flight(dispatcher)
            await running.stop(leaver)
            await wait_for(lambda: _async(stack.orchestrator.grouping.spares == (survivor,)), 30, "the survivor as a spare")
            assert stack.orchestrator.grouping.groups == () and released == [group.group_id] and prepared == []
            assert running.calls[survivor] == [("release", None)]  # its stage was given up, once
            assert f"worker {survivor} dropped" not in caplog.text
            assert f"group {group.group_id} dissolved" in caplog.text

            # a worker joins: the survivor and it form a new group (a new split), and the sequences go on there
            await running.start(keys[2])
            regrouped = await stack.group_of([k for k in keys if k.address != leaver])
            progress = await asyncio.wait_for(dispatching, 120)
            assert [r.error for r in progress.results] == [None] * 2
            assert all(len(r.output_token_ids) == 300 for r in progress.results)
            assert all(r.groups[-1] == regrouped.group_id for r in progress.results)
            await running.stop_all()
            no_leaked_tasks(caplog)
        finally:
            await running.stop_all()


async def _async(value):
    return value
