"""The ledger's database URLs: the ones people paste, and the async driver SQLAlchemy needs for each."""

from __future__ import annotations


def async_url(url: str) -> str:
    """Accept the URLs people paste (`postgresql://`, `sqlite:///`) and name the async driver."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    return url
