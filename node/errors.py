"""Errors every part of the node may raise to the command line."""

from __future__ import annotations

from ledger.errors import StagewiseError


class CommandError(StagewiseError):
    """A failure the user can act on: `stagewise` prints it as one line, exit status 1, no traceback."""


# What to do when the address given as the staking contract is not one (ledger.chain.errors.NoStakingContract).
FIND_THE_STAKING_CONTRACT = (
    "pass as --contract the address `stagewise chain deploy` printed (it keeps it in <data dir>/chain.json) or the "
    "staking_contract of a validator's GET /health, and as --rpc-url a node of that contract's chain"
)
