"""Task dispatch that survives a change of orchestrator: the next one (a takeover by another validator process
on the ledger, or a restart) goes on with the tasks not yet finished, instead of the whole list again.

Kept in the ledger (ledger/orchestrator_state.py) per model:
- which positions of the task list finished, with the figures they added (tasks done, failed, correct,
  reroutes); written at most every `save_every_s` while tasks finish, and once more at the end. A task that
  finished in the last moments before a kill -9 runs again: the loss is bounded by that interval, and a task
  run twice costs compute, not money (each run's job is judged and paid on its own).
- the seed counter reserved, in blocks of `SEED_BLOCK`: a job's seed is issued only once its counter is
  reserved, so a later orchestrator, with the same seed secret, never issues a seed a worker has seen (I1:
  seeds are unpredictable to workers). A takeover skips the rest of a block.

The progress applies only to the same task list (`tasks_digest`); a different one starts from its first task.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from ledger.orchestrator_state import load_dispatch_progress, reserve_seeds, save_dispatch_progress
from node.orchestration.progress import Progress
from node.orchestration.tasks import Task

log = logging.getLogger(__name__)

SEED_BLOCK = 256
SAVE_EVERY_S = 1.0
FIGURES = ("tasks_done", "tasks_failed", "checked", "correct", "reroutes")


def tasks_digest(tasks: Iterable[Task]) -> str:
    """sha256 of the task list as dispatched (one entry per sample): what saved progress belongs to."""
    listed = [[t.task_id, t.prompt, list(t.prompt_token_ids or ()), t.answer, t.checker, t.max_new_tokens]
              for t in tasks]
    return hashlib.sha256(json.dumps(listed, separators=(",", ":")).encode()).hexdigest()


@dataclass
class FinishedTasks:
    """Positions of the task list that finished: every one below `below`, and those in `above`."""

    below: int = 0
    above: set[int] = field(default_factory=set)

    def add(self, position: int) -> None:
        self.above.add(position)
        while self.below in self.above:
            self.above.discard(self.below)
            self.below += 1

    def __contains__(self, position: int) -> bool:
        return position < self.below or position in self.above

    def to_json(self) -> dict:
        return {"below": self.below, "above": sorted(self.above)}

    @classmethod
    def from_json(cls, data: dict) -> FinishedTasks:
        return cls(int(data.get("below", 0)), {int(p) for p in data.get("above", ())})


class SavedDispatch:
    """One model's dispatch progress in the ledger, for a `Dispatcher` (its `saved`)."""

    def __init__(self, ledger, model_id: str, seed_block: int = SEED_BLOCK, save_every_s: float = SAVE_EVERY_S) -> None:
        self.ledger = ledger
        self.model_id = model_id
        self.seed_block = seed_block
        self.save_every_s = save_every_s
        self.finished = FinishedTasks()
        self._digest = ""
        self._progress: Progress | None = None
        self._reserved = 0
        self._reserving: asyncio.Lock | None = None
        self._saving: asyncio.Task | None = None
        self._dirty = False

    async def resume(self, digest: str, progress: Progress) -> int:
        """Read back what the last orchestrator finished of the task list `digest` into `progress` (and
        `finished`); the seed counter to go on from."""
        state = await load_dispatch_progress(self.ledger, self.model_id)
        self._digest, self._progress = digest, progress
        self._reserved = state.seeds_reserved
        if state.tasks_digest == digest and state.finished:
            self.finished = FinishedTasks.from_json(state.finished.get("positions", {}))
            for name in FIGURES:
                setattr(progress, name, int(state.finished.get(name, 0)))
            if progress.tasks_done + progress.tasks_failed >= progress.tasks_total:
                progress.finished_at = progress.clock()  # nothing left: the run reads as over, not running
            log.info("dispatch goes on where the last orchestrator left it: %d of %d tasks finished",
                     progress.tasks_done + progress.tasks_failed, progress.tasks_total)
        return state.seeds_reserved

    async def reserve(self, counter: int) -> None:
        """Before a job whose seed has counter `counter` is issued: reserve it (a block at a time)."""
        if counter <= self._reserved:
            return
        if self._reserving is None:
            self._reserving = asyncio.Lock()
        async with self._reserving:
            if counter > self._reserved:
                self._reserved = await reserve_seeds(self.ledger, self.model_id, counter + self.seed_block - 1)

    def task_finished(self, position: int) -> None:
        """A position finished (its figures are in the progress already): saved within `save_every_s`."""
        self.finished.add(position)
        self._dirty = True
        if self._saving is None or self._saving.done():
            self._saving = asyncio.get_running_loop().create_task(self._save_later(), name="save dispatch progress")

    def stop(self) -> None:
        """No more saves from this orchestrator (a pending one is dropped)."""
        if self._saving is not None:
            self._saving.cancel()

    async def flush(self) -> None:
        """Save now (the dispatch ended)."""
        self._dirty = False
        await self._save()

    async def _save_later(self) -> None:
        while self._dirty:  # tasks that finish while a save is under way are in the next one
            await asyncio.sleep(self.save_every_s)
            self._dirty = False
            try:
                await self._save()
            except Exception as error:  # tried again with the next finished task; a lost save reruns a few
                log.warning("could not save the dispatch progress: %r", error)

    async def _save(self) -> None:
        if self._progress is None:
            return
        figures = {name: getattr(self._progress, name) for name in FIGURES}
        await save_dispatch_progress(self.ledger, self.model_id, self._digest,
                                     {"positions": self.finished.to_json(), **figures})
