"""Alembic environment for the ledger, async (aiosqlite / asyncpg).

Two ways in: `alembic upgrade head` on the command line (the URL from `-x db=...`, STAGEWISE_DB or the
default SQLite file), or `Ledger.upgrade()`, which hands over its own connection in
`config.attributes["connection"]` so that migrating needs no second engine.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from ledger.database_url import async_url
from ledger.models import metadata
from node import settings

config = context.config
target_metadata = metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("db")
    return async_url(url) if url else settings.database_url()


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate)
    finally:
        await engine.dispose()


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif config.attributes.get("connection") is not None:
    _migrate(config.attributes["connection"])
else:
    asyncio.run(_run_async())
