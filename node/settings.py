"""Where a node keeps its files and which database it writes to.

Flags win over environment variables, which win over defaults: `--data-dir` / `STAGEWISE_HOME`
(default `~/.stagewise`) and `--db` / `STAGEWISE_DB` (default a SQLite file in the data directory).
"""

from __future__ import annotations

import os
from pathlib import Path

from ledger.database_url import async_url

HOME_ENV = "STAGEWISE_HOME"
DB_ENV = "STAGEWISE_DB"


def data_dir() -> Path:
    """The data directory, created on first use."""
    path = Path(os.environ.get(HOME_ENV) or Path.home() / ".stagewise").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Converted models and other derived files that can be rebuilt at any time."""
    path = data_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url() -> str:
    """An async SQLAlchemy URL: `STAGEWISE_DB`, or a SQLite file in the data directory."""
    url = os.environ.get(DB_ENV)
    if url:
        return async_url(url)
    return f"sqlite+aiosqlite:///{data_dir() / 'ledger.db'}"
