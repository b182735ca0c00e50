"""The cross-job test (PROTOCOL I8): each accepted low-precision job adds its stages' figures to their workers'
running sequential tests, and a worker whose figures drift is flagged and kept out of the groups for a while.

A subtle cheat (fp8 weights on the tiny models, docs/verification.md) passes every chunk and every job, but
moves a stage's average over many jobs. `drift_step` (node/toploc/job_statistics.py) adds a job's figures only to
the tests of the stages judged on figures of their own (`judged_stages`): stage 0 (it starts from the tokens), a
later stage replayed from the rows it received (the handoff audit's stage 1, or a stage asked because its figures
from the tokens lean towards a cheat, `stages_to_ask`, called by node/validator/service.py before the commit), and a
stage asked that did not hand its rows in (judged on the figures the validator has). The state lives in the ledger
(ledger/drift.py) and is updated in the transaction that records the job's verdict: a job counts once.

A flag is not a slash: a slash must be co-signed by validators recomputing it from one job's evidence (I7),
while a flag rests on every job since the test last restarted, through the figures recorded with each verdict (the
rows an accepted job's stages handed in are not kept: they would weigh on the ledger for every job). It keeps the
worker out of this ledger's groups (node/orchestration/bans.py) and is listed by `GET /v1/workers/{address}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import drift
from ledger.journal import checksum
from node.protocol.job import JobSpec
from node.toploc.job_statistics import SEQUENTIAL_TESTS, JobFigures, SequentialState, drift_step, leans_to_cheat


@dataclass(frozen=True)
class Flagged:
    worker: str
    stage: int
    jobs: int


def stage_job_figures(figures: dict[str, Any], stages: int) -> list[JobFigures | None] | None:
    """Each stage's whole-job figures from a verdict's figures (node/validator/replay.py: stages[s].job.figures);
    None when they are not all there."""
    per_stage = figures.get("stages") or []
    if len(per_stage) != stages:
        return None
    found: list[JobFigures | None] = []
    for stage in per_stage:
        job = ((stage or {}).get("job") or {}).get("figures")
        if job is None:
            found.append(None)
            continue
        try:
            found.append(JobFigures(int(job["chunks"]), float(job["mant_err_mean"]), float(job["exp_rate"])))
        except (KeyError, TypeError, ValueError):
            return None
    return found


def judged_stages(figures: dict[str, Any]) -> frozenset[int]:
    """The stages whose figures count in their tests: stage 0, every stage replayed from the rows it handed in, and
    every stage asked for them that did not hand them in (or handed in rows that do not hold)."""
    defences = figures.get("defences") or {}
    withheld = figures.get("rows_withheld") or []
    return frozenset({0} | {int(stage) for stage in defences} | {int(stage) for stage in withheld})


async def _step(conn: AsyncConnection, spec: JobSpec, figures: dict[str, Any]):
    test = SEQUENTIAL_TESTS.get(spec.precision)
    workers = [checksum(stage.worker) for stage in spec.stages]
    per_stage = stage_job_figures(figures, len(workers))
    if test is None or per_stage is None or len(set(workers)) != len(workers):
        return None
    saved = await drift.running_tests(conn, spec.model_id, spec.precision, workers)
    states = [SequentialState(saved[w].log_ratio, saved[w].jobs) for w in workers]
    return test, workers, per_stage, states


async def stages_to_ask(conn: AsyncConnection, spec: JobSpec, figures: dict[str, Any]) -> list[int]:
    """The stages after the first whose figures in this job, replayed from the tokens, lean their tests towards a
    cheat: the validator asks them for the rows they received, so that figures of their own are what counts. Reads
    only."""
    found = await _step(conn, spec, figures)
    if found is None:
        return []
    test, _, per_stage, states = found
    judged = judged_stages(figures)
    return [s for s in range(1, len(states)) if s not in judged and leans_to_cheat(test, states[s], per_stage[s])]


async def add_to_running_tests(conn: AsyncConnection, spec: JobSpec, job_id: str, figures: dict[str, Any],
                               at_ms: int) -> Flagged | None:
    """Add an accepted, replayed job to its workers' running tests (inside the verdict's transaction); the
    worker flagged by it, if any."""
    found = await _step(conn, spec, figures)
    if found is None:
        return None
    test, workers, per_stage, states = found
    step = drift_step(test, states, per_stage, judged_stages(figures))
    await drift.save_running_tests(conn, spec.model_id, spec.precision, {
        worker: drift.RunningTest(state.log_ratio, state.jobs) for worker, state in zip(workers, step.states)
    })
    if step.blamed is None:
        return None
    before = states[step.blamed]
    flag = drift.Flag(job_id, workers[step.blamed], spec.model_id, spec.precision, step.blamed,
                      before.log_ratio + test.log_ratio(per_stage[step.blamed]), before.jobs + 1, at_ms)
    if not await drift.record_flag(conn, flag):
        return None
    return Flagged(flag.worker, flag.stage, flag.jobs)


def flags_json(flags: Sequence[drift.Flag]) -> list[dict[str, Any]]:
    """Flags as the API shows them."""
    return [{"job_id": f.job_id, "model_id": f.model_id, "precision": f.precision, "stage": f.stage,
             "log_ratio": f.log_ratio, "jobs": f.jobs, "at_ms": f.at_ms} for f in flags]
