"""The root of stagewise's error tree.

Every error the code raises on purpose derives from `StagewiseError`, so a caller can tell "stagewise
refused or failed, and says why" from a bug, and the command line turns any of them into one line and an
exit status. It lives in the ledger, the bottom layer, because the ledger imports nothing from the node.

- `InvalidInput` (also a ValueError): bytes or values from outside that do not parse or break a rule;
  refused, nothing changed.
- everything else: a failure of the operation itself (a peer gone, a chain that reverts, a database
  that cannot be opened), each a subclass named for its area.
"""

from __future__ import annotations


class StagewiseError(Exception):
    """Base of every error stagewise raises on purpose."""


class InvalidInput(StagewiseError, ValueError):
    """Outside bytes or values that do not parse or break a rule: refused, nothing changed."""
