"""Which of the validator processes sharing a ledger orchestrates a model: the holder of its lease in the
ledger (ledger/orchestrator_state.py `hold_lease`). The holder renews it every third of its term; the others
validate bundles and stand by, answering workers 503 `not_orchestrating` (a worker given several
`--validator` URLs moves on to the next), and take the lease over once it has run out, resuming the workers
and groups the ledger keeps (node/orchestration/resume.py). A process that cannot renew in time stops
orchestrating before its term ends, so two never orchestrate at once while their clocks agree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ledger.orchestrator_state import give_up_lease, hold_lease
from node.orchestration.orchestrator import Orchestrator

log = logging.getLogger(__name__)

LEASE_S = 15.0  # a dead orchestrator's workers wait at most this long (plus one renewal period) for another


class Leadership:
    def __init__(self, orchestrator: Orchestrator, ledger, holder: str, lease_s: float = LEASE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.orchestrator = orchestrator
        self.ledger = ledger
        self.holder = holder
        self.lease_s = lease_s
        self.clock = clock
        self._leading: asyncio.Task | None = None
        self._held_until = 0.0
        self._said: str | None = None

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Until cancelled: while this process holds the lease, `lead()` runs; when the lease is lost (or cannot
        be renewed before it runs out), `lead` is cancelled and this process stands by again."""
        try:
            while True:
                await self.step(lead)
                await asyncio.sleep(self.lease_s / 3)
        finally:
            if self._leading is not None:
                await _cancel(self._leading)
                self._leading = None
                try:
                    await give_up_lease(self.ledger, self.orchestrator.model_id, self.holder)
                except Exception as error:  # stopping anyway: the lease runs out by itself
                    log.warning("could not hand the orchestrator lease back: %s", error)

    async def step(self, lead: Callable[[], Awaitable[None]]) -> None:
        """One look at the lease: take or renew it, and start or stop leading accordingly."""
        try:
            holder, until = await hold_lease(self.ledger, self.orchestrator.model_id, self.holder, self.lease_s,
                                             self.clock())
        except Exception as error:  # the ledger is unreachable: lead only while the lease surely holds
            log.warning("cannot renew the orchestrator lease: %s", error)
            still = self.clock() < self._held_until - self.lease_s / 3
            holder, until = (self.holder, self._held_until) if still else ("", 0.0)
        if holder == self.holder:
            self._held_until = until
            if self._leading is None:
                log.info("this validator (%s) orchestrates model %s", self.holder, self.orchestrator.model_id)
                self.orchestrator.standing_by = None
                self._leading = asyncio.create_task(lead(), name="orchestrate")
            self._said = None
            return
        if self._leading is not None:
            log.warning("the orchestrator lease went to %s: standing by", holder or "nobody (ledger down)")
            await _cancel(self._leading)
            self._leading = None
            self.orchestrator.forget_everything()  # a later term starts from the ledger
        self.orchestrator.standing_by = holder or "unknown"
        if self._said != holder:
            log.info("standing by: %s orchestrates model %s; this validator takes over if its lease runs out",
                     holder or "an unreachable ledger", self.orchestrator.model_id)
            self._said = holder


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
