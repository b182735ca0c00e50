"""The jobs this validator's orchestrator issued, so bundles for any other spec can be refused.

A worker could otherwise invent a job (its own prompt, its own seed) and be paid for it: PROTOCOL I1 says the
seed is the orchestrator's, and the validator enforces it at intake through `ValidatorNode.spec_guard`.
The record is in memory: after a restart the guard knows only the jobs issued since (a bundle of an
earlier job is refused, and that job is soft-invalidated at its deadline like any unfinished one).
"""

from __future__ import annotations

from node.protocol.job import JobSpec
from node.validator.deadlines import AWAITING


class IssuedJobs:
    """The last `limit` job ids issued (oldest forgotten first: by then their bundles are long in)."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self._ids: dict[str, None] = {}
        self.limit = limit

    async def record(self, spec: JobSpec) -> None:
        """The dispatcher's `on_job` hook: called before a job is sent to its group."""
        self._ids[spec.job_id_hex] = None
        while len(self._ids) > self.limit:
            del self._ids[next(iter(self._ids))]

    def __contains__(self, job_id_hex: str) -> bool:
        return job_id_hex in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    async def guard(self, spec: JobSpec) -> str | None:
        """`ValidatorNode.spec_guard`: None to accept, else why the bundle is refused."""
        if spec.job_id_hex in self._ids:
            return None
        return f"job {spec.job_id_hex} was not issued by this validator's orchestrator (seeds are the orchestrator's, I1)"


def awaited_by_ledger(ledger):
    """`ValidatorNode.spec_guard` for a validator without an orchestrator (`--no-orchestration`) on a shared
    ledger: accept a bundle only of a job some orchestrator on that ledger issued and still awaits (it
    records the job before any worker sees it, node.validator.deadlines)."""
    async def guard(spec: JobSpec) -> str | None:
        record = await ledger.job(spec.job_id_hex)
        if record is not None and record.status == AWAITING:
            return None
        return (f"job {spec.job_id_hex} is not one an orchestrator on this ledger issued and awaits "
                "(seeds are the orchestrator's, I1)")

    return guard

