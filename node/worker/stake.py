"""The worker's checks against the chain before it serves: where the stake lives (`chain_info`), this key's
stake on the staking contract (`read_stake`), and whether the validator that controls our stage server is one
the contract backs (`controllers_of`, `read_validator_role`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from eth_utils import is_address, to_checksum_address

from ledger.amounts import ether_and_wei
from ledger.chain.client import ChainClient
from ledger.chain.errors import ChainError, NoStakingContract
from node.errors import FIND_THE_STAKING_CONTRACT
from node.worker.config import WorkerConfig
from node.worker.errors import WorkerError, short_error

T = TypeVar("T")


@dataclass(frozen=True)
class StakeStatus:
    address: str
    staked_wei: int
    required_wei: int
    chain_id: int
    contract: str
    rpc_url: str = ""

    @property
    def missing_wei(self) -> int:
        return max(self.required_wei - self.staked_wei, 0)

    @property
    def enough(self) -> bool:
        return self.staked_wei >= self.required_wei and self.staked_wei > 0

    def explain(self, keystore: Path | str | None = None) -> str:
        if self.enough:
            return f"{self.address} stakes {ether_and_wei(self.staked_wei)} on chain {self.chain_id} (minimum {ether_and_wei(self.required_wei)})"
        have = "no stake" if self.staked_wei == 0 else f"only {ether_and_wei(self.staked_wei)} staked"
        return (
            f"{self.address} has {have} on chain {self.chain_id} (contract {self.contract}); "
            f"{ether_and_wei(max(self.missing_wei, 1))} more is needed (minimum {ether_and_wei(self.required_wei)}). "
            f"Stake it with: stagewise stake {max(self.missing_wei, 1)}wei --keystore {keystore or 'KEYSTORE'}"
            f" --rpc-url {self.rpc_url or 'RPC_URL'} --contract {self.contract}"
        )


def read_stake(rpc_url: str, contract: str, address: str, required_wei: int) -> StakeStatus:
    """The key's active stake on the staking contract (blocking; web3). WorkerError when the chain cannot
    be reached or holds no such contract."""
    return _read_contract(
        rpc_url, contract,
        lambda chain: StakeStatus(address, chain.stake_of(address), required_wei, chain.chain_id, chain.address, rpc_url),
    )


def read_validator_role(rpc_url: str, contract: str, address: str) -> bool:
    """Whether `address` is in the staking contract's validator set (blocking; web3)."""
    return _read_contract(rpc_url, contract, lambda chain: chain.is_validator(address))


def _read_contract(rpc_url: str, contract: str, read: Callable[[Any], T]) -> T:
    """`read(chain)` on a fresh connection; every failure is one WorkerError that names the chain."""
    try:
        return read(ChainClient.connect(rpc_url, address=contract, request_timeout=10.0))
    except NoStakingContract as error:
        raise WorkerError(f"chain at {rpc_url}: {error}; {FIND_THE_STAKING_CONTRACT}") from None
    except ChainError as error:
        raise WorkerError(f"chain at {rpc_url}: {error}") from None
    except Exception as error:  # requests/web3 connection errors come in many classes
        raise WorkerError(f"cannot reach the chain at {rpc_url}: {short_error(error)}") from None


def unbacked_controller_error(validator_url: str, address: str, contract: str) -> WorkerError:
    return WorkerError(
        f"the validator at {validator_url} signs stage control as {address}, which is not a validator on the staking "
        f"contract {contract}: the contract would refuse its slashes and anchors, and a stage server obeys only a "
        "validator the contract backs (check --validator, or have the contract's owner add that address)"
    )


@dataclass(frozen=True)
class ChainInfo:
    rpc_url: str
    chain_id: int | None
    contract: str
    min_stake_wei: int


def chain_info(config: WorkerConfig, health: dict[str, Any]) -> ChainInfo:
    """Where the stake lives: flags first, then what the validator's /health says about its chain."""
    chain = health.get("chain") if isinstance(health.get("chain"), dict) else {}
    rpc_url = config.rpc_url or chain.get("rpc_url")
    contract = config.contract or chain.get("staking_contract") or chain.get("contract")
    if not rpc_url:
        raise WorkerError("no chain to check the stake on: pass --rpc-url (the validator does not publish one)")
    if not contract:
        raise WorkerError("no staking contract: pass --contract (the validator does not publish one)")
    minimum = config.min_stake_wei
    if minimum is None:
        minimum = int(health.get("min_stake_wei") or chain.get("min_stake_wei") or 1)
    chain_id = chain.get("chain_id")
    return ChainInfo(rpc_url, int(chain_id) if chain_id is not None else None, contract, minimum)


def controllers_of(health: dict[str, Any], validator_url: str) -> tuple[str, ...]:
    """The address whose signed control requests our stage server obeys: the validator's (GET /health)."""
    address = health.get("validator")
    if not (isinstance(address, str) and is_address(address)):
        raise WorkerError(
            f"the validator at {validator_url} names no address in GET /health (\"validator\": {address!r}), so the "
            "stage server could not tell its control requests from a stranger's; run the validator with its key"
        )
    return (to_checksum_address(address),)
