"""`alembic upgrade head` builds exactly the schema the models declare, on SQLite and PostgreSQL."""

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from ledger.models import metadata

ROOT = Path(__file__).resolve().parents[2]


def _alembic(url: str, *args: str) -> None:
    """What `alembic -x db=URL ARGS...` does, in this process (the async env runs its own event loop)."""
    from alembic.config import CommandLine

    CommandLine().main(["-c", str(ROOT / "alembic.ini"), "-x", f"db={url}", *args])


def _snapshot(sync_conn) -> dict:
    """Tables, columns, keys and indexes as the database itself reports them."""
    insp = inspect(sync_conn)
    out = {}
    for table in sorted(set(insp.get_table_names()) - {"alembic_version"}):
        out[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)
            ],
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "fks": sorted(
                (fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"], fk["options"].get("ondelete"))
                for fk in insp.get_foreign_keys(table)
            ),
            "uniques": sorted((u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)),
            "indexes": sorted(
                (
                    i["name"],
                    tuple(i["column_names"]),
                    bool(i["unique"]),
                    str(i.get("dialect_options", {}).get(f"{sync_conn.dialect.name}_where", "")),
                )
                for i in insp.get_indexes(table)
            ),
        }
    return out


def _diff(sync_conn) -> list:
    context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
    return compare_metadata(context, metadata)


async def _inspect(db_url: str, create: bool = False) -> tuple[dict, list]:
    """(snapshot, autogenerate diff against the models) of the database, after create_all if asked."""
    engine = create_async_engine(db_url)
    try:
        if create:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        async with engine.connect() as conn:
            return await conn.run_sync(_snapshot), await conn.run_sync(_diff)
    finally:
        await engine.dispose()


def test_upgrade_head_gives_the_models_schema_and_downgrade_removes_it(db_url):
    """Sync on purpose: the Alembic command line starts its own event loop, as it does in a shell."""
    _alembic(db_url, "upgrade", "head")
    migrated, diff = asyncio.run(_inspect(db_url))
    assert diff == []
    assert "ux_journal_reward" in str(migrated["journal"]["indexes"])

    _alembic(db_url, "downgrade", "base")
    assert asyncio.run(_inspect(db_url))[0] == {}

    declared, _ = asyncio.run(_inspect(db_url, create=True))
    assert migrated == declared
