"""What stops a worker, as one line a person can act on (`WorkerError`), and the error text it quotes."""

from __future__ import annotations

from ledger.errors import StagewiseError


class WorkerError(StagewiseError):
    """Why the worker cannot start or go on: one line a person can act on."""


def short_error(error: BaseException) -> str:
    """An exception's message (its class name when it has none), cut to 300 characters."""
    text = str(error) or type(error).__name__
    return text if len(text) <= 300 else text[:300] + "…"
