"""Many concurrent callers, one ledger round trip: calls made while a batch is under way join the next one.

A heartbeat reads its worker's stake and a registration writes its worker's record; one at a time, each is a
statement (or a transaction) of its own, which costs the validator more than the rest of the request. Here
every caller still waits for its own answer, read or written after it arrived, so nothing is answered from
a stale copy: only the round trips are shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_BATCH = 500  # items per round trip: bounds one statement's size (PostgreSQL takes at most 65,535 parameters)


class BatchedCalls(Generic[Item, Result]):
    """`await batched(item)` -> `run(items)[i]` for its item, with at most one `run` under way at a time."""

    def __init__(self, run: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]], max_batch: int = MAX_BATCH) -> None:
        self._run = run
        self.max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future]] = []
        self._draining: asyncio.Task | None = None
        self.batches = 0  # round trips made (for tests and benches)

    async def __call__(self, item: Item) -> Result:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain(), name="batched ledger calls")
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            self.batches += 1
            try:
                results = await self._run([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} calls came back with {len(results)} results")
            except Exception as error:  # every caller of this batch gets the error; the next batch still runs
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():  # its caller may have given up (cancelled)
                    future.set_result(result)
