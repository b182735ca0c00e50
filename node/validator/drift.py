"""The cross-job test (PROTOCOL I8): each accepted low-precision job adds its stages' figures to their workers'
running sequential tests, and a worker whose figures drift is flagged and kept out of the groups for a while.

A subtle cheat (fp8 weights on the tiny models, docs/verification.md) passes every chunk and every job, but
moves a stage's average over many jobs. `drift_step` (node/toploc/job_statistics.py) decides, and blames a stage
only on figures of its own: stage 0's (it starts from the tokens), or a later stage's replayed from the rows it
received (a defence or the handoff audit, `isolated_stages`). Before a job whose figures would take a later stage
over the boundary is committed, the validator asks that stage for its rows (`stage_to_isolate`, called by
node/validator/service.py). The state lives in the ledger (ledger/drift.py) and is updated in the transaction that
records the job's verdict: a job counts once.

A flag is not a slash: a slash must be co-signed by validators recomputing it from one job's evidence (I7),
while a flag rests on every job since the test last restarted, through the figures recorded with each verdict (the
rows an accepted job's stages handed in are not kept: they would weigh on the ledger for every job). It keeps the
worker out of this ledger's groups (node/orchestration/bans.py) and is listed by `GET /v1/workers/{address}`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from ledger import drift
from ledger.journal import checksum
from node.protocol.job import JobSpec
from node.toploc.job_statistics import SEQUENTIAL_TESTS, JobFigures, SequentialState, drift_step


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


def isolated_stages(figures: dict[str, Any]) -> frozenset[int]:
    """The stages whose figures are their own: stage 0, and every stage replayed from the rows it handed in."""
    defences = figures.get("defences") or {}
    return frozenset({0} | {int(stage) for stage, found in defences.items() if (found or {}).get("valid")})


async def _step(conn: AsyncConnection, spec: JobSpec, figures: dict[str, Any]):
    test = SEQUENTIAL_TESTS.get(spec.precision)
    workers = [checksum(stage.worker) for stage in spec.stages]
    per_stage = stage_job_figures(figures, len(workers))
    if test is None or per_stage is None or len(set(workers)) != len(workers):
        return None
    saved = await drift.running_tests(conn, spec.model_id, spec.precision, workers)
    states = [SequentialState(saved[w].log_ratio, saved[w].jobs) for w in workers]
    return test, workers, per_stage, states, drift_step(test, states, per_stage, isolated_stages(figures))


async def stage_to_isolate(conn: AsyncConnection, spec: JobSpec, figures: dict[str, Any],
                           asked: Collection[int]) -> int | None:
    """The first stage (not in `asked`) this accepted job would take over the boundary on figures that may carry
    an earlier stage's drift: the validator asks it for the rows it received before committing. Reads only."""
    found = await _step(conn, spec, figures)
    if found is None:
        return None
    decisions = found[-1].decisions
    return next((s for s, d in enumerate(decisions) if d == "unconfirmed" and s not in asked), None)


async def add_to_running_tests(conn: AsyncConnection, spec: JobSpec, job_id: str, figures: dict[str, Any],
                               at_ms: int) -> Flagged | None:
    """Add an accepted, replayed job to its workers' running tests (inside the verdict's transaction); the
    worker flagged by it, if any."""
    found = await _step(conn, spec, figures)
    if found is None:
        return None
    test, workers, per_stage, states, step = found
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
