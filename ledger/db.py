"""The ledger's database: engines, opening, and the Alembic migrations (SQLite or PostgreSQL).

`open_engines(url)` makes the engines `Ledger.open` runs on: on SQLite a reading engine and a writing one
(the file put in WAL mode first; the writer's transactions BEGIN IMMEDIATE, so writers queue on the
database lock instead of failing when one upgrades a read to a write), on PostgreSQL one engine for both.
`prepare(write_engine)` brings the schema to head (under an advisory lock on PostgreSQL) and makes sure the
journal head row exists, translating what goes wrong into a `LedgerError` that says what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ledger import journal
from ledger.database_url import async_url
from ledger.errors import StagewiseError
from ledger.models import JournalHead, metadata

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_MIGRATION_LOCK = 0x5354_4147_4557  # "STAGEW": the advisory lock key held while migrating


class LedgerError(StagewiseError):
    """A request the ledger refuses (unknown job, bad status, ...); nothing was written."""


def insert(dialect: str, table: Table) -> Any:
    """The dialect's INSERT for `table`, which has `on_conflict_do_nothing` / `on_conflict_do_update`."""
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


async def open_engines(url: str, *, must_exist: bool = False) -> tuple[str, AsyncEngine, AsyncEngine]:
    """The async URL and the (reading, writing) engines for the database at `url` (any SQLAlchemy URL;
    `async_url` names the async driver). `must_exist`: a SQLite file that is not there is a LedgerError."""
    url = async_url(url)
    if must_exist:
        _require_sqlite_file(url)
    if url.startswith("sqlite"):
        try:
            await asyncio.to_thread(_use_wal, url)
        except sqlite3.Error as error:
            raise LedgerError(f"cannot open the ledger at {url}: {error}") from error
        return url, _sqlite_engine(url, immediate=False), _sqlite_engine(url, immediate=True)
    if url.startswith("postgresql"):
        engine = create_async_engine(url, pool_pre_ping=True)
        return url, engine, engine
    raise LedgerError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


async def prepare(write_engine: AsyncEngine, *, migrate: bool = True) -> None:
    """Migrate to head (with `migrate`) and make sure the journal head row exists."""
    dialect = write_engine.dialect.name
    safe_url = write_engine.url.render_as_string(hide_password=True)
    try:
        if migrate:
            await upgrade(write_engine)
        async with write_engine.begin() as conn:
            await conn.execute(
                insert(dialect, JournalHead.__table__)
                .values(id=1, seq=0, entry_hash=journal.GENESIS_HASH)
                .on_conflict_do_nothing()
            )
    except (ProgrammingError, OperationalError) as error:
        if "journal_head" not in str(error):
            raise LedgerError(f"cannot open the ledger at {safe_url}: {error.orig or error}") from error
        raise LedgerError(
            "this database has no ledger schema yet: run `stagewise ledger migrate` (or alembic upgrade head)"
        ) from error
    except (DBAPIError, OSError) as error:
        cause = getattr(error, "orig", None) or error
        raise LedgerError(f"cannot open the ledger at {safe_url}: {cause}") from error


async def upgrade(write_engine: AsyncEngine, revision: str = "head") -> None:
    """Run the Alembic migrations up to `revision` on this database (what `alembic upgrade` does)."""
    if not (MIGRATIONS_DIR / "env.py").exists():  # an install without the migrations: plain create
        async with write_engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        return
    async with write_engine.begin() as conn:
        if write_engine.dialect.name == "postgresql":
            # Two nodes starting together on a fresh database: the second waits, then finds the
            # schema at head. (SQLite's BEGIN IMMEDIATE already serialises them.)
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        await conn.run_sync(_run_upgrade, revision)


def _run_upgrade(sync_conn: Any, revision: str) -> None:
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)  # opening a ledger at head is not news; a change is, below
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = sync_conn
        before = MigrationContext.configure(sync_conn).get_current_revision()
        command.upgrade(config, revision)
        after = MigrationContext.configure(sync_conn).get_current_revision()
    finally:
        alembic_log.setLevel(level)
    if after != before:
        log.info("ledger schema migrated from %s to %s", before or "empty", after)


def _require_sqlite_file(url: str) -> None:
    if not url.startswith("sqlite"):
        return
    path = make_url(url).database
    if path and path != ":memory:" and not path.startswith("file:") and not os.path.exists(path):
        raise LedgerError(
            f"there is no ledger at {path}: point at a validator's ledger with --db URL (or STAGEWISE_DB), e.g. "
            "--db sqlite:///path/to/ledger.db or --db postgresql://user@host/db"
        )


def _use_wal(url: str, timeout_s: float = 60.0) -> None:
    """Put the SQLite database at `url` in WAL mode, once, before any pooled connection opens it.

    WAL is a property of the file, so later connections get it without asking. Switching modes takes an
    exclusive lock that SQLite does not wait for (the busy timeout does not apply), so nodes opening a fresh
    database together would get "database is locked" from a PRAGMA on connect; here the switch is retried.
    """
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=timeout_s)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def _sqlite_engine(url: str, *, immediate: bool) -> AsyncEngine:
    """A SQLite engine (the file already in WAL mode: `_use_wal`) whose transactions begin explicitly: BEGIN
    IMMEDIATE for the writer, so that two writers queue on the database lock instead of failing when one
    upgrades a read to a write."""
    engine = create_async_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB: the journal's indexes stay in memory
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
