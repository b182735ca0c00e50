"""Fixtures shared by every test: real databases.

`db_url` runs a test twice, on a fresh SQLite file and on a fresh database of the PostgreSQL server
named by `STAGEWISE_TEST_PG_URL` (skipped, with the reason, where that variable is unset). Each test gets
its own database, so tests (and developers running them side by side) never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_ENV = "STAGEWISE_TEST_PG_URL"


def _admin_connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database as an asyncpg URL; dropped after the test."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set: no PostgreSQL server to test against")
    name = f"sw_test_{uuid.uuid4().hex[:12]}"
    with _admin_connect(base) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    root = base.rsplit("/", 1)[0]
    try:
        yield f"postgresql+asyncpg://{root.split('://', 1)[1]}/{name}"
    finally:
        with _admin_connect(base) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A fresh SQLite file as an aiosqlite URL."""
    return f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def _shared_cache(tmp_path_factory):
    """One cache for the whole run: SmolLM2 is converted from its GGUF once (~25 s), not once per test using it."""
    return tmp_path_factory.mktemp("stagewise-cache")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch, _shared_cache):
    """No test reads or writes the user's ~/.stagewise."""
    monkeypatch.setenv("STAGEWISE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STAGEWISE_CACHE_DIR", str(_shared_cache))
    monkeypatch.delenv("STAGEWISE_DB", raising=False)
