"""An orchestrator that restarts picks up where it was: its workers and groups are kept in the ledger
(ledger/orchestrator_state.py) as they change, and read back on start.

On start the saved workers are restored, each with one heartbeat timeout to be heard from again (a worker's
heartbeats go on through the restart and find it registered, so nobody re-registers), and every saved group
is prepared again: the stage servers still hold the same assignment, so that loads nothing and only gives the
pipeline driver back its view; a stage that no longer answers is dropped and its group repaired as after any
failure. A registration replayed after the restart is refused: the last accepted one's timestamp and nonce
are kept with the worker.
"""

from __future__ import annotations

import logging

from ledger.orchestrator_state import forget_worker, load_orchestrator_state, save_groups, save_workers
from node.orchestration.batched_calls import BatchedCalls
from node.orchestration.grouping import Group, GroupingError
from node.orchestration.registry import WorkerRecord

log = logging.getLogger(__name__)


class SavedOrchestration:
    """The ledger rows of one model's orchestrator."""

    def __init__(self, ledger, model_id: str) -> None:
        self.ledger = ledger
        self.model_id = model_id
        self._saved_ids: list[str] | None = None
        self._save = BatchedCalls(self._save_records)  # a burst of registrations: one transaction, not one each

    async def worker_registered(self, record: WorkerRecord) -> None:
        """Returns once the record is committed (in a transaction shared with the registrations beside it)."""
        await self._save(record)

    async def _save_records(self, records: list[WorkerRecord]) -> list[None]:
        await save_workers(self.ledger, self.model_id, [(r.address, r.to_saved(), r.signed_at) for r in records])
        return [None] * len(records)

    async def worker_gone(self, address: str) -> None:
        await forget_worker(self.ledger, self.model_id, address)

    async def groups_changed(self, groups: tuple[Group, ...]) -> None:
        ids = [group.group_id for group in groups]  # a group's id is the hash of its stages
        if ids != self._saved_ids:
            await save_groups(self.ledger, self.model_id, [group.to_json() for group in groups])
            self._saved_ids = ids

    async def load(self) -> tuple[tuple[WorkerRecord, ...], tuple[Group, ...]]:
        state = await load_orchestrator_state(self.ledger, self.model_id)
        workers, groups = [], []
        for saved in state.workers:
            try:
                workers.append(WorkerRecord.from_saved(saved.record))
            except (KeyError, TypeError, ValueError) as error:
                log.warning("a saved worker could not be read back (%r): it must register again", error)
        for saved in state.groups:
            try:
                groups.append(Group.from_json(saved))
            except (KeyError, TypeError, ValueError, GroupingError) as error:
                log.warning("a saved group could not be read back (%r): its workers are grouped afresh", error)
        self._saved_ids = [str(saved.get("group_id")) for saved in state.groups]
        return tuple(workers), tuple(groups)
