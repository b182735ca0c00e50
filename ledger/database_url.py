"""The ledger's database URLs: the ones people paste, and the async driver SQLAlchemy needs for each."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from ledger.errors import InvalidInput


class DatabaseUrlError(InvalidInput):
    """A database URL and a password file that cannot be put together."""


def async_url(url: str) -> str:
    """Accept the URLs people paste (`postgresql://`, `sqlite:///`) and name the async driver."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    return url


def with_password_file(url: str, path: Path | None) -> str:
    """`url` with the password read from the file at `path` (its first line; for secrets mounted as files,
    e.g. docker's /run/secrets/...): the URL must name a user and no password of its own."""
    if path is None:
        return url
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise DatabaseUrlError(f"cannot read the database password file {path}: {reason}") from None
    password = lines[0] if lines else ""
    if not password:
        raise DatabaseUrlError(f"the database password file {path} is empty")
    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        raise DatabaseUrlError("a database password file was given for a SQLite ledger, which takes none")
    if not parts.username:
        raise DatabaseUrlError("a database password file was given but the URL names no user (postgresql://USER@HOST/DB)")
    if parts.password is not None:
        raise DatabaseUrlError("the database URL has a password of its own and a password file was given: keep one")
    user, host = parts.netloc.rsplit("@", 1)  # the user as written, quoted or not
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))
