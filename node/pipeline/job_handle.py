"""Stage 0's handle on a job it started (`JobHandle`), and `PipelineError`, a request the stage server cannot
serve (status and code for the JSON error); both part of the stage server's API (server.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ledger.errors import StagewiseError
from node.protocol.job import JobSpec


class PipelineError(StagewiseError):
    """A request the stage server cannot serve: `status` and `code` for the JSON error."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class JobHandle:
    """Stage 0's view of a submitted job: stream `events()` or await `wait()`.

    Events are dicts: {"tokens": [...]} as tokens arrive, then {"done": true, "finish_reason",
    "output_token_ids"} once every stage closed the job, or {"error": {...}, "complaint": {...} | None}.
    """

    job_id: str
    spec: JobSpec
    output: list[int] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    complaint: dict[str, Any] | None = None  # Complaint.summary() when a handoff complaint failed the job
    finish_reason: str | None = None
    _events: list[dict] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _push(self, event: dict) -> None:
        self._events.append(event)
        self._changed.set()

    async def events(self):
        index = 0
        while True:
            while index < len(self._events):
                event = self._events[index]
                index += 1
                yield event
                if "done" in event or "error" in event:
                    return
            self._changed.clear()
            if index < len(self._events):
                continue
            await self._changed.wait()

    async def wait(self) -> tuple[int, ...]:
        """The output token ids; raises PipelineError when the job failed."""
        await self.finished.wait()
        if self.error is not None:
            raise PipelineError(502, "job_failed", self.error)
        return tuple(self.output)

