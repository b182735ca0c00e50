"""Errors every part of the node may raise to the command line."""

from __future__ import annotations

from ledger.errors import StagewiseError


class CommandError(StagewiseError):
    """A failure the user can act on: `stagewise` prints it as one line, exit status 1, no traceback."""
