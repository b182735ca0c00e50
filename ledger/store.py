"""The ledger: one object over one SQL database (SQLite or PostgreSQL), async SQLAlchemy 2.0.

Open it from a URL (the node's settings choose the default); opening runs the Alembic migrations to head
(`ledger.db`):

    ledger = await Ledger.open(url)              # or Ledger.open() for STAGEWISE_DB / the data dir
    ...
    await ledger.close()

`Ledger` is a facade; each part lives in the module that describes it:
- writing: `async with ledger.transaction() as tx:` gives a `LedgerTx` (`ledger.writes`): record_bundle,
  record_verdict, record_sample, append, set_stake, set_job_status, enqueue, close_epoch, mark_anchored, set_cursor. The
  same calls exist on `Ledger`, each in a transaction of its own.
- reading (`ledger.queries`): job, receipts, verdict, head, entries, leaderboard, worker, worker_history,
  slashes, epochs, epoch, tasks; and get_cursor (`ledger.outbox`).
- the chain outbox (`ledger.outbox`): take_outbox, mark_sent, mark_failed, set_outbox_payload, outbox.
- proofs (`ledger.proofs`): reward_proof, entry_proof.
- `verify() -> VerifyReport` (`ledger.audit`): recompute the hash chain, the totals and every epoch root.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger import audit, db, drift
from ledger import outbox as chain_outbox
from ledger import proofs, queries
from ledger.epochs import RewardProof
from ledger.writes import LedgerTx

__all__ = ["Ledger"]

P = ParamSpec("P")
R = TypeVar("R")
_LedgerCall = Callable[Concatenate["Ledger", P], Awaitable[R]]


def _in_transaction(call: Callable[Concatenate[LedgerTx, P], Awaitable[R]]) -> _LedgerCall[P, R]:
    """A `LedgerTx` call as a `Ledger` call, in a transaction of its own."""

    @functools.wraps(call)
    async def run(self: Ledger, *args: P.args, **kwargs: P.kwargs) -> R:
        async with self.transaction() as tx:
            return await call(tx, *args, **kwargs)

    return run


def _writing(call: Callable[Concatenate[AsyncConnection, P], Awaitable[R]]) -> _LedgerCall[P, R]:
    """A write taking a connection as a `Ledger` call, in a transaction of its own."""

    @functools.wraps(call)
    async def run(self: Ledger, *args: P.args, **kwargs: P.kwargs) -> R:
        async with self.transaction() as tx:
            return await call(tx.conn, *args, **kwargs)

    return run


def _reading(query: Callable[Concatenate[AsyncConnection, P], Awaitable[R]]) -> _LedgerCall[P, R]:
    """A query taking a connection as a `Ledger` call, on a reading connection of its own."""

    @functools.wraps(query)
    async def run(self: Ledger, *args: P.args, **kwargs: P.kwargs) -> R:
        async with self.reading() as conn:
            return await query(conn, *args, **kwargs)

    return run


class Ledger:
    """The ledger over one database. See the module docstring for the calls."""

    def __init__(self, url: str, engine: AsyncEngine, write_engine: AsyncEngine) -> None:
        self.url = url
        self.engine = engine
        self.write_engine = write_engine
        self.dialect = engine.dialect.name
        self._reward_proofs = proofs.RewardProofs()

    @property
    def safe_url(self) -> str:
        """The database URL without its password, fit for logs and error messages."""
        return self.engine.url.render_as_string(hide_password=True)

    # --- opening -------------------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True, must_exist: bool = False) -> Ledger:
        """Open the ledger at `url` (any SQLAlchemy URL; `async_url` names the async driver) and bring its
        schema to head.
        `must_exist`: for commands that only read, a SQLite file that is not there is an error (LedgerError)
        instead of a fresh, empty ledger that would answer "unknown" to everything."""
        url, engine, write_engine = await db.open_engines(url, must_exist=must_exist)
        ledger = cls(url, engine, write_engine)
        try:
            await db.prepare(write_engine, migrate=migrate)
        except BaseException:
            await ledger.close()
            raise
        return ledger

    async def upgrade(self, revision: str = "head") -> None:
        """Run the Alembic migrations up to `revision` on this database (what `alembic upgrade` does)."""
        await db.upgrade(self.write_engine, revision)

    async def close(self) -> None:
        await self.engine.dispose()
        if self.write_engine is not self.engine:
            await self.write_engine.dispose()

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[LedgerTx]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        async with self.write_engine.begin() as conn:
            yield LedgerTx(conn)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    # --- writes, each in a transaction of its own (ledger.writes) -------------------------------------

    record_bundle = _in_transaction(LedgerTx.record_bundle)
    record_verdict = _in_transaction(LedgerTx.record_verdict)
    append = _in_transaction(LedgerTx.append)
    set_stake = _in_transaction(LedgerTx.set_stake)
    set_job_status = _in_transaction(LedgerTx.set_job_status)
    enqueue = _in_transaction(LedgerTx.enqueue)
    close_epoch = _in_transaction(LedgerTx.close_epoch)
    follow_epoch = _in_transaction(LedgerTx.follow_epoch)
    abandon_epochs = _in_transaction(LedgerTx.abandon_epochs)
    mark_anchored = _in_transaction(LedgerTx.mark_anchored)
    set_cursor = _in_transaction(LedgerTx.set_cursor)
    record_sample = _in_transaction(LedgerTx.record_sample)

    # --- the chain outbox and cursors (ledger.outbox) -------------------------------------------------

    take_outbox = _writing(chain_outbox.take)
    mark_sent = _writing(chain_outbox.mark_sent)
    mark_failed = _writing(chain_outbox.mark_failed)
    set_outbox_payload = _writing(chain_outbox.set_payload)
    outbox = _reading(chain_outbox.rows)
    get_cursor = _reading(chain_outbox.get_cursor)

    # --- reading (ledger.queries) ---------------------------------------------------------------------

    job = _reading(queries.job)
    receipts = _reading(queries.receipts)
    verdict = _reading(queries.verdict)
    head = _reading(queries.head)
    entries = _reading(queries.entries)
    leaderboard = _reading(queries.leaderboard)
    worker = _reading(queries.worker)
    worker_history = _reading(queries.worker_history)
    slashes = _reading(queries.slashes)
    slash_times_ms = _reading(queries.slash_times_ms)
    verdict_outcomes = _reading(queries.verdict_outcomes)
    epochs = _reading(queries.epochs)
    epoch = _reading(queries.epoch)
    tasks = _reading(queries.tasks)
    epoch_cumulative = _reading(queries.epoch_cumulative)
    latest_known_epoch = _reading(queries.latest_known_epoch)
    first_unsettled_epoch = _reading(queries.first_unsettled_epoch)
    entries_waiting = _reading(queries.entries_waiting)
    followed_epoch = _reading(queries.followed_epoch)
    drift_flags = _reading(drift.flags)
    latest_drift_flag_ms = _reading(drift.latest_flag_ms)

    # --- proofs (ledger.proofs) and the audit (ledger.audit) ------------------------------------------

    async def reward_proof(self, worker: str, epoch: int | None = None) -> RewardProof | None:
        """The claim proof of `worker`'s cumulative reward in `epoch` (default: the latest); None if the
        epoch does not exist or the worker had earned nothing by then."""
        async with self.reading() as conn:
            return await self._reward_proofs.reward_proof(conn, worker, epoch)

    entry_proof = _reading(proofs.entry_proof)
    verify = _reading(audit.verify)
