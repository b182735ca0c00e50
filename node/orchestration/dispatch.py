"""Task dispatch: turn tasks into jobs with orchestrator seeds and keep every group busy.

Each task becomes a `SequenceRun` with a seed the orchestrator derives from its own secret and a counter
(I1: HMAC-SHA256(secret, counter), never anything a worker says), and runs as one or more jobs: the first on
whichever group has room, continuations after a stage failure on the group that replaced it
(rerouting.py). Every group holds up to `sequences_per_group` sequences in flight, so its pipeline stays
full; as soon as one finishes the next task starts. Finished tasks are decoded, checked against their
reference answer and counted in `Progress`. With `samples_per_task` k, each task runs as k sequences, each
with its own seed, so that the dataset has a pass rate per task; with `on_sample`, the output of a sequence
whose job was accepted is handed over as a `SampleRecord` (the validator records it in the ledger: one
dataset row, ledger.samples).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ledger.samples import SampleRecord
from node.orchestration.grouping import Group
from node.orchestration.orchestrator import Orchestrator
from node.orchestration.pipeline_driver import JobInterrupted, StageFailure
from node.orchestration.progress import Progress, TaskResult
from node.orchestration.rerouting import HistoryCheck, SequenceRun, continuation_spec
from node.orchestration.saved_dispatch import SavedDispatch, tasks_digest
from node.orchestration.tasks import Task, Tokenizer
from node.protocol.job import JobSpec, SamplingParams

log = logging.getLogger(__name__)

JobHook = Callable[[JobSpec], Awaitable[None]]
VerdictLookup = Callable[[str], Awaitable[str | None]]
SampleHook = Callable[[SampleRecord], Awaitable[object]]


class SeedSchedule:
    """Seeds from a validator secret and a job counter: unpredictable to workers, reproducible by the node.

    `seed(n) = first 8 bytes of HMAC-SHA256(secret, "stagewise/seed" || n)` as a big-endian integer. Without a
    given secret a fresh 32-byte one comes from the OS CSPRNG.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(32)
        if len(self._secret) < 16:
            raise ValueError("a seed secret has at least 16 bytes")
        self._counter = 0

    @property
    def counter(self) -> int:
        """The counter of the last seed handed out."""
        return self._counter

    def skip_to(self, counter: int) -> None:
        """Hand out seeds after `counter` only (those up to it were issued by an earlier orchestrator)."""
        self._counter = max(self._counter, counter)

    def seed(self, counter: int) -> int:
        digest = hmac.new(self._secret, b"stagewise/seed" + counter.to_bytes(8, "big"), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big")

    def next(self) -> int:
        self._counter += 1
        return self.seed(self._counter)

    def __repr__(self) -> str:
        return f"SeedSchedule(counter={self._counter})"  # never the secret


@dataclass(frozen=True)
class DispatchPolicy:
    sequences_per_group: int | None = None
    """Sequences in flight per group; None: two per stage, so every stage has work while the others compute
    (the stage servers micro-batch what is in flight) and a finished sequence never leaves a stage idle."""
    max_new_tokens: int = 32
    sampling: SamplingParams = SamplingParams()
    max_reroutes: int = 8
    """A sequence that has lost this many stages is given up (recorded as failed, the run goes on)."""
    wait_for_groups: int = 1
    """Groups that must have formed before the first task is dispatched, so that a network still starting
    up does not pile every task onto the first group to form."""
    idle_poll_s: float = 0.25
    retry_delay_s: float = 0.5
    """How long a sequence interrupted through nobody's fault waits before it runs again."""
    verdict_wait_s: float = 1800.0
    """How long a finished sequence waits for its job's verdict (with a `verdict_of` lookup)."""
    samples_per_task: int = 1
    """Sequences per task, each with its own seed: the samples a task's pass rate is measured on."""

    def __post_init__(self) -> None:
        if self.samples_per_task < 1:
            raise ValueError("samples_per_task must be at least 1")
        if self.sequences_per_group is not None and self.sequences_per_group < 1:
            raise ValueError("sequences_per_group must be at least 1")
        if self.wait_for_groups < 1:
            raise ValueError("wait_for_groups must be at least 1")

    def in_flight_for(self, group: Group) -> int:
        if self.sequences_per_group is not None:
            return self.sequences_per_group
        return 2 * len(group.stages)


class Dispatcher:
    def __init__(
        self,
        orchestrator: Orchestrator,
        tasks: Iterable[Task],
        tokenizer: Tokenizer,
        seeds: SeedSchedule,
        policy: DispatchPolicy = DispatchPolicy(),
        on_job: JobHook | None = None,
        results_path: Path | None = None,
        history_check: HistoryCheck | None = None,
        verdict_of: VerdictLookup | None = None,
        on_sample: SampleHook | None = None,
        saved: SavedDispatch | None = None,
    ) -> None:
        """`saved`: where the progress is kept for the next orchestrator, which goes on from there
        (node/orchestration/saved_dispatch.py). `verdict_of(job_id)`: the outcome of a job's verdict ("accepted", "blamed", ...) or None while it
        has none. With it, a task counts as done only once the job that produced its output was accepted; any
        other verdict runs it again from the prompt (a blamed worker is evicted meanwhile)."""
        self.orchestrator = orchestrator
        self.tokenizer = tokenizer
        self.seeds = seeds
        self.policy = policy
        self.on_job = on_job
        self.results_path = results_path
        self.history_check = history_check
        self.verdict_of = verdict_of
        self.on_sample = on_sample
        self.saved = saved
        self._tasks = deque(enumerate(task for task in tasks for _ in range(policy.samples_per_task)))
        self.progress = Progress(tasks_total=len(self._tasks))
        orchestrator.progress = self.progress
        self._retry: deque[SequenceRun] = deque()
        self._delayed = 0  # interrupted sequences waiting out retry_delay_s
        self._active: dict[asyncio.Task, tuple[SequenceRun, str]] = {}
        self._settling: set[asyncio.Task] = set()
        self._suspect: dict[str, int] = {}  # group id -> failures being settled
        self._done: deque[asyncio.Task] = deque()  # tasks that ended, for the main loop
        self._woken = asyncio.Event()

    async def run(self) -> Progress:
        """Dispatch every task to completion (or failure) and return the figures."""
        if self.saved is not None:
            await self._resume()
        while self._tasks and len(self.orchestrator.grouping.groups) < self.policy.wait_for_groups:
            await self._wait_for_groups()
        try:
            while self._tasks or self._retry or self._active or self._delayed or self._settling:
                self._fill()
                if not self._active and not self._settling:
                    await self._wait_for_groups()
                    continue
                if not self._done:
                    try:
                        await asyncio.wait_for(self._woken.wait(), timeout=self.policy.idle_poll_s)
                    except asyncio.TimeoutError:
                        pass
                self._woken.clear()
                while self._done:
                    self._handle(self._done.popleft())
        finally:
            for task in [*self._active, *self._settling]:
                task.cancel()
            if self.saved is not None:
                self.saved.stop()  # cancelled: the lease may be another's now, whose progress is newer
        if self.saved is not None:
            await self.saved.flush()
        return self.progress

    def _track(self, task: asyncio.Task) -> asyncio.Task:
        """Have the main loop woken when `task` ends. (Not asyncio.wait over every task in flight: that costs
        each turn of the loop a callback per task, and a network of thousands of groups holds ten thousands.)"""
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task) -> None:
        if task in self._active or task in self._settling:
            self._done.append(task)
            self._woken.set()

    def _handle(self, finished: asyncio.Task) -> None:
        if finished in self._settling:
            self._settling.discard(finished)
            finished.result()  # a bug in settling must not pass silently
            return
        run, group_id = self._active.pop(finished)
        if finished.exception() is None and self.verdict_of is None:
            self._finish(run, None)
        elif finished.exception() is None:
            self._settling.add(self._track(asyncio.create_task(self._confirm(run), name=f"verdict {run.task.task_id}")))
        else:
            # rerouting waits for a regroup (maybe a group loading its layers): off the main loop, so the other
            # groups keep getting work meanwhile
            self._suspect[group_id] = self._suspect.get(group_id, 0) + 1  # no new work there meanwhile
            self._settling.add(self._track(asyncio.create_task(self._settle(run, group_id, finished),
                                                               name=f"reroute {run.task.task_id}")))

    async def _resume(self) -> None:
        """Leave out the tasks an earlier orchestrator finished; issue seeds after its last."""
        digest = tasks_digest(task for _, task in self._tasks)
        self.seeds.skip_to(await self.saved.resume(digest, self.progress))
        self._tasks = deque((position, task) for position, task in self._tasks if position not in self.saved.finished)

    def _fill(self) -> None:
        """Start sequences one group at a time in turn, so that groups share the work evenly."""
        load: dict[str, int] = {}
        for _, group_id in self._active.values():
            load[group_id] = load.get(group_id, 0) + 1
        closed = set(self._suspect) | set(self.orchestrator.withdrawn)  # failing, or being regrouped right now
        open_groups = [g for g in self.orchestrator.grouping.groups if g.group_id not in closed]
        while open_groups:
            for group in list(open_groups):
                if load.get(group.group_id, 0) >= self.policy.in_flight_for(group):
                    open_groups.remove(group)
                    continue
                run = self._next_run()
                if run is None:
                    return
                self._start(run, group)
                load[group.group_id] = load.get(group.group_id, 0) + 1

    def _next_run(self) -> SequenceRun | None:
        if self._retry:
            return self._retry.popleft()
        if not self._tasks:
            return None
        position, task = self._tasks.popleft()
        prompt = task.prompt_token_ids or tuple(self.tokenizer.encode_prompt(task.prompt or ""))
        return SequenceRun(
            task=task,
            prompt_token_ids=tuple(prompt),
            seed=self.seeds.next(),
            max_new_tokens=task.max_new_tokens or self.policy.max_new_tokens,
            position=position,
        )

    def _start(self, run: SequenceRun, group: Group) -> None:
        task = asyncio.create_task(self._advance(run, group), name=f"sequence {run.task.task_id} on {group.group_id}")
        self._active[task] = (run, group.group_id)
        self._track(task)

    async def _advance(self, run: SequenceRun, group: Group) -> None:
        short = await self.orchestrator.registry.understaked(stage.worker for stage in group.stages)
        if short is not None:
            worker, refused = short
            if refused.code == "stake_unavailable":  # the chain or ledger is down: wait, drop nobody
                raise JobInterrupted(f"no job issued: {refused}")
            raise StageFailure(worker, f"no job issued: {refused}")
        spec = continuation_spec(run, group, self.orchestrator.model_id, self.policy.sampling,
                                 self.orchestrator.precision)
        if self.saved is not None:
            await self.saved.reserve(self.seeds.counter)  # before any worker sees the seed (I1)
        run.job_ids.append(spec.job_id_hex)
        run.groups.append(group.group_id)
        if self.on_job is not None:
            await self.on_job(spec)
        base = len(run.generated)
        self.progress.job_started(group.group_id)

        def sink(token_ids) -> None:
            run.generated.extend(int(t) for t in token_ids)

        try:
            output = await self.orchestrator.driver.run(group, spec, sink)
        finally:
            self.progress.job_ended(group.group_id, len(run.generated) - base)
        run.generated[base:] = list(output)

    async def _settle(self, run: SequenceRun, group_id: str, finished: asyncio.Task) -> None:
        try:
            await self._reroute(run, group_id, finished.exception())
        finally:
            left = self._suspect.pop(group_id, 1) - 1
            if left > 0:
                self._suspect[group_id] = left

    async def _reroute(self, run: SequenceRun, group_id: str, error: BaseException | None) -> None:
        if error is None:
            self._finish(run, None)
            return
        if not isinstance(error, (StageFailure, JobInterrupted)):
            log.error("sequence %s failed on %s: %r", run.task.task_id, group_id, error)
            self._finish(run, f"{type(error).__name__}: {error}")
            return
        run.reroutes += 1
        log.warning(
            "sequence %s interrupted on %s after %d tokens: %s", run.task.task_id, group_id, len(run.generated), error
        )
        if run.reroutes > self.policy.max_reroutes:
            self._finish(run, f"gave up after {run.reroutes} interruptions: {error}")
            return
        if isinstance(error, StageFailure):
            await self.orchestrator.worker_failed(error.worker, error.reason)
        if self.history_check is not None and run.generated:
            kept = await self.history_check(run, self.policy.sampling)
            if kept < len(run.generated):
                log.warning(
                    "sequence %s: history from the failed job rejected after %d of %d tokens",
                    run.task.task_id, kept, len(run.generated),
                )
                del run.generated[kept:]
        if run.finished(self.policy.sampling.stop_ids):
            self._finish(run, None)  # the last token had arrived before the stage failed
            return
        if isinstance(error, JobInterrupted):
            self._retry_later(run)
            return
        successor = self.orchestrator.successor(group_id)
        if successor is not None:
            self._start(run, successor)  # rerouted: the same sequence continues on the repaired group
        else:
            self._retry.appendleft(run)  # the group is gone: continue on the next group with room

    def _retry_later(self, run: SequenceRun) -> None:
        self._delayed += 1

        def ready() -> None:
            self._delayed -= 1
            self._retry.appendleft(run)

        asyncio.get_running_loop().call_later(self.policy.retry_delay_s, ready)

    async def _confirm(self, run: SequenceRun) -> None:
        """Finish `run` once the job that produced its output has a verdict: accepted, done; blamed (or
        soft-invalidated: its bundle never came), run again from the prompt. Tokens of earlier, interrupted jobs were
        checked by `history_check` when the sequence moved on."""
        job_id = run.job_ids[-1]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.verdict_wait_s
        outcome = None
        while outcome is None and loop.time() < deadline:
            outcome = await self.verdict_of(job_id)
            if outcome is None:
                await asyncio.sleep(self.policy.idle_poll_s)
        if outcome is None:
            self._finish(run, f"no verdict on job {job_id} within {self.policy.verdict_wait_s:.0f} s")
        elif outcome == "accepted":
            if self.on_sample is not None:
                await self._record_sample(run, job_id)
            self._finish(run, None)
        elif run.reroutes >= self.policy.max_reroutes:
            self._finish(run, f"gave up after {run.reroutes} interruptions: job {job_id} was {outcome}")
        else:
            log.warning("sequence %s: job %s was %s; running it again from the prompt", run.task.task_id, job_id, outcome)
            run.reroutes += 1
            run.generated.clear()
            self._retry.append(run)

    async def _record_sample(self, run: SequenceRun, job_id: str) -> None:
        """Hand the accepted output of `run` to `on_sample`: the whole sequence (a rerouted one spans jobs; the
        last one's acceptance covers it, the earlier tokens having passed `history_check`)."""
        text = self.tokenizer.decode(run.generated)
        sampling = self.policy.sampling
        record = SampleRecord(
            job_id=job_id, task_id=run.task.task_id, task_source=run.task.source or "unnamed",
            model_id=self.orchestrator.model_id, prompt_token_ids=run.prompt_token_ids,
            completion_token_ids=tuple(run.generated), completion_text=text,
            sampling={"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                      "max_new_tokens": run.max_new_tokens, "stop_ids": list(sampling.stop_ids)},
            seed=run.seed, prompt_text=run.task.prompt, answer=run.task.answer, checker=run.task.checker,
            correct=run.task.check(text),
        )
        try:
            await self.on_sample(record)
        except Exception as error:  # the dataset misses a row; the task still counts, the run goes on
            log.error("sequence %s: the sample of job %s was not recorded: %r", run.task.task_id, job_id, error)

    def _finish(self, run: SequenceRun, error: str | None) -> None:
        text = self.tokenizer.decode(run.generated)
        result = TaskResult(
            task_id=run.task.task_id,
            output_token_ids=tuple(run.generated),
            output_text=text,
            correct=None if error else run.task.check(text),
            job_ids=tuple(run.job_ids),
            groups=tuple(run.groups),
            reroutes=run.reroutes,
            error=error,
        )
        self.progress.task_finished(result)
        if self.saved is not None:
            self.saved.task_finished(run.position)
        if self.results_path is not None:
            with open(self.results_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(result.to_json()) + "\n")

    async def _wait_for_groups(self) -> None:
        async with self.orchestrator.changed:
            try:
                await asyncio.wait_for(self.orchestrator.changed.wait(), timeout=self.policy.idle_poll_s)
            except asyncio.TimeoutError:
                pass
