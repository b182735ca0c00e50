"""On PostgreSQL a job's bundle is stored uncompressed (STORAGE EXTERNAL): hex proofs barely compress, and
compressing each ~18 KB bundle on insert was the largest cost of intake (migration 0004)."""

import asyncio

from sqlalchemy import text

from ledger.store import Ledger


def _storage(url: str) -> str:
    async def read() -> str:
        ledger = await Ledger.open(url)
        try:
            async with ledger.reading() as conn:
                query = text(
                    "SELECT a.attstorage::text FROM pg_attribute a JOIN pg_class c ON a.attrelid = c.oid "
                    "WHERE c.relname = 'jobs' AND a.attname = 'bundle'"
                )
                return (await conn.execute(query)).scalar_one()
        finally:
            await ledger.close()

    return asyncio.run(read())


def test_a_migrated_ledger_stores_bundles_uncompressed(pg_url):
    assert _storage(pg_url) == "e"
