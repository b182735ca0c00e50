"""What the chain client raises: `ChainError` (refused or unanswered), `NoStakingContract` (not the contract at
that address), `ContractRevert` (a custom error of the contract, decoded by `ledger.chain.abi.ErrorDecoder`),
`TransactionTimeout` (no receipt in time)."""

from __future__ import annotations

from typing import Any

from ledger.errors import StagewiseError


class ChainError(StagewiseError):
    """Something the chain refused or did not answer."""


class NoStakingContract(ChainError):
    """The address given as the staking contract holds no code, or a contract that is not StagewiseStaking."""


class ContractRevert(ChainError):
    """A call the contract reverted. `name` is the custom error (e.g. "NotValidator"), `args` its arguments."""

    def __init__(self, name: str, args: dict[str, Any], data: bytes, function: str = ""):
        self.name = name
        self.args_ = args
        self.data = data
        self.function = function
        shown = ", ".join(f"{k}={_show(v)}" for k, v in args.items())
        where = f"{function}: " if function else ""
        super().__init__(f"{where}reverted with {name}({shown})")


class TransactionTimeout(ChainError):
    """No receipt arrived in time; the transaction may still be mined later."""


def _show(value: Any) -> str:
    return "0x" + value.hex() if isinstance(value, bytes) else str(value)
