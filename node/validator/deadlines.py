"""Jobs that were issued but whose bundle never came: soft invalidation at the deadline (PROTOCOL 5).

The orchestrator tells the node about every job it sends to a group (`ValidatorNode.expect`); the job gets
a `jobs` row in status `awaiting` (its spec kept as the row's document) before any worker sees it. When the
bundle arrives, intake turns that row into an ordinary pending job. A job still awaiting its bundle
`bundle_deadline_seconds` after it was issued is soft-invalidated: a verdict `soft_invalidated`, a
journal entry, nobody paid and nobody slashed, all in one transaction guarded by the row's status, so
several validators sweeping one ledger invalidate each job once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import Any

from sqlalchemy import select, update

from ledger import json_input
from ledger.db import insert
from ledger.errors import InvalidInput
from ledger.models import JOB_DONE, Job
from node.protocol.job import JobSpec
from node.validator.settle import settle
from node.validator.verdict import soft_invalidation

log = logging.getLogger(__name__)

AWAITING = "awaiting"
NO_BUNDLE = "no complete bundle by the deadline"


async def expect(node: Any, spec: JobSpec) -> bool:
    """Record an issued job as awaiting its bundle; False when the job is already known."""
    ledger = node.ledger
    document = json.dumps({"expected": spec.to_dict()}, sort_keys=True, separators=(",", ":"))
    async with ledger.transaction() as tx:
        result = await tx.conn.execute(
            insert(ledger.dialect, Job.__table__)
            .values(
                job_id=spec.job_id_hex,
                group_id=spec.group_id[:66],
                model_id=spec.model_id,
                stage_count=len(spec.stages),
                bundle=document,
                received_at=dt.datetime.now(dt.timezone.utc),
                status=AWAITING,
                attempts=0,
            )
            .on_conflict_do_nothing()
        )
    return result.rowcount == 1


async def expect_many(node: Any, specs: list[JobSpec]) -> None:
    """`expect` for jobs issued together, in one transaction (the dispatcher issues a job per sequence,
    thousands at once when a network of groups starts: node/orchestration/setup.py batches them)."""
    now = dt.datetime.now(dt.timezone.utc)
    rows = {
        spec.job_id_hex: {
            "job_id": spec.job_id_hex, "group_id": spec.group_id[:66], "model_id": spec.model_id,
            "stage_count": len(spec.stages), "received_at": now, "status": AWAITING, "attempts": 0,
            "bundle": json.dumps({"expected": spec.to_dict()}, sort_keys=True, separators=(",", ":")),
        }
        for spec in specs
    }
    if not rows:
        return
    async with node.ledger.transaction() as tx:
        await tx.conn.execute(insert(node.ledger.dialect, Job.__table__).values(list(rows.values())).on_conflict_do_nothing())


async def sweep_once(node: Any) -> list[str]:
    """Soft-invalidate every awaiting job past its deadline; returns their ids."""
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=node.config.bundle_deadline_seconds)
    async with node.ledger.reading() as conn:
        rows = (
            await conn.execute(
                select(Job.job_id, Job.bundle).where(Job.status == AWAITING, Job.received_at < cutoff).limit(500)
            )
        ).all()
    done = []
    for row in rows:
        try:
            spec = expected_spec(row.bundle)
        except InvalidInput as error:  # a row stricter rules refuse must not stall the sweep of the others
            log.error("job %s: its issued spec no longer parses (%s); left awaiting", row.job_id, error)
            continue
        verdict = soft_invalidation(len(spec.stages))
        settlement = settle(verdict, spec, None, work_units=(0,) * len(spec.stages), soft_reason=NO_BUNDLE)
        async with node.ledger.transaction() as tx:
            taken = await tx.conn.execute(
                update(Job).where(Job.job_id == row.job_id, Job.status == AWAITING).values(status=JOB_DONE)
            )
            if taken.rowcount != 1:
                continue  # the bundle arrived, or another validator swept it
            await tx.record_verdict(
                row.job_id,
                verdict.outcome.value,
                reason=verdict.reason.value,
                figures={"verdict": verdict.to_dict(), "deadline_seconds": node.config.bundle_deadline_seconds},
                validator=node.address,
            )
            await tx.append(list(settlement.entries))
        node.metrics.verdicts.labels(verdict.outcome.value, verdict.reason.value).inc()
        log.info("job %s soft-invalidated: no complete bundle within %.0f s", row.job_id, node.config.bundle_deadline_seconds)
        done.append(row.job_id)
    return done


def expected_spec(document: str) -> JobSpec:
    """The spec `expect` kept in an awaiting job's row (this node's own writing, not outside bytes)."""
    return JobSpec.from_dict(json_input.loads(document)["expected"])


async def run_deadlines(node: Any, *, poll_seconds: float = 1.0) -> None:
    while True:
        try:
            await sweep_once(node)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("deadline sweep failed; will retry")
        await asyncio.sleep(poll_seconds)
