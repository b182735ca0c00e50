"""The staking contract from Python: one client for an in-process EVM and for any JSON-RPC node.

`ChainClient.embedded()` starts an in-process chain (py-evm through web3's EthereumTesterProvider, ten
prefunded dev accounts) and deploys StagewiseStaking on it: the default for the devnet and most tests.
`ChainClient.connect(url, address=...)` talks to any node by JSON-RPC (anvil in tests, or the embedded chain
served by `ledger.chain.embedded`). Both run the same code path:

- transactions are signed here with eth-account (keys never leave the process, never get logged),
- nonces come from a local counter per sender, under a lock, re-read from the node after a failed send,
- every transaction is simulated first (eth_estimateGas), so a revert surfaces before anything is sent, as
  a `ContractRevert` that names the contract's custom error and its arguments,
- receipts are awaited with a timeout (`TransactionTimeout`).

Around it: `ledger.chain.errors` (what it raises), `ledger.chain.abi` (compiled contracts, revert decoding),
`ledger.chain.events` (the contract's events from its logs), `ledger.chain.keys` (signers, dev keys).
The client is synchronous and thread-safe; async callers wrap calls in `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak
from eth_utils import to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted

from ledger import json_input
from ledger.chain.abi import STAKING, Artifact, ErrorDecoder, abi_signature
from ledger.chain.embedded import EmbeddedProvider
from ledger.chain.errors import ChainError, NoStakingContract, TransactionTimeout
from ledger.chain.event_log import EventLog
from ledger.chain.events import ChainEvent, EventDecoder
from ledger.chain.keys import Signer, as_account, tester_keys
from ledger.chain.orders import AnchorOrder, OrderDomain, SlashOrder, pack_signatures, sign_order

log = logging.getLogger(__name__)

DEFAULT_UNBONDING_DELAY = 7 * 24 * 3600  # seconds
DEFAULT_TX_TIMEOUT = 60.0
ORDER_TTL = 7 * 24 * 3600  # seconds a signed slash or anchor order stays valid on chain
PRIORITY_FEE = 10**9  # 1 gwei tip
NONCE_ATTEMPTS = 3  # another process sending with the same key can take a nonce between our read and send


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TxResult:
    """A mined, successful transaction and the staking contract's events it emitted."""

    tx_hash: str
    block_number: int
    gas_used: int
    fee: int  # wei the sender paid for gas
    events: tuple[ChainEvent, ...] = ()
    contract_address: str | None = None


@dataclass(frozen=True)
class StakeInfo:
    active: int
    unbonding: int
    release_at: int  # unix seconds at which `unbonding` may be withdrawn; 0 when nothing unbonds

    @property
    def slashable(self) -> int:
        return self.active + self.unbonding


@dataclass(frozen=True)
class AnchorInfo:
    count: int
    latest_epoch: int
    rewards_root: bytes


@dataclass(frozen=True)
class PendingRecovery:
    to: str
    amount: int
    executable_at: int  # unix seconds; 0 when none is announced


# ---------------------------------------------------------------------------------------------- client


class BoundedHTTPProvider(Web3.HTTPProvider):
    """web3's HTTP provider, reading answers through the node's bounded parser: the RPC URL may be one a
    validator named, and JSON nested 100,000 deep would otherwise overflow the C stack (ledger/json_input.py)."""

    @staticmethod
    def decode_rpc_response(raw_response: bytes) -> Any:
        try:
            return json_input.loads(raw_response, max_bytes=json_input.MAX_BYTES * 4)
        except json_input.JsonInputError as error:
            raise ChainError(f"the chain node answered something that is not JSON-RPC: {error}") from None


class ChainClient(EventLog):
    """The staking contract on one chain. Build with `embedded()` or `connect()`."""

    def __init__(
        self,
        w3: Web3,
        *,
        address: str | None = None,
        dev_keys: Sequence[Signer] = (),
        tx_timeout: float = DEFAULT_TX_TIMEOUT,
        backend: str = "rpc",
    ):
        self.w3 = w3
        self.backend = backend
        self.dev_keys = list(dev_keys)
        self.owner_key: LocalAccount | None = None  # set by served_dev_chain: the key that owns its contract
        self.tx_timeout = tx_timeout
        self.staking = Artifact.load(STAKING)
        self.errors = ErrorDecoder()
        self.errors.add_abi(self.staking.abi)
        self._address: str | None = None
        self._contract = None
        self._send_lock = threading.Lock()
        self._nonces: dict[str, int] = {}
        self.events = EventDecoder(self.staking.abi)
        if address is not None:
            self.use(address)

    # ----------------------------------------------------------------- construction

    @classmethod
    def embedded(
        cls,
        *,
        deploy: bool = True,
        owner: Signer | None = None,
        unbonding_delay: int = DEFAULT_UNBONDING_DELAY,
        treasury: str | None = None,
        validators: Iterable[str] = (),
        threshold: int = 1,
        tx_timeout: float = DEFAULT_TX_TIMEOUT,
    ) -> "ChainClient":
        """A fresh in-process chain with ten prefunded `dev_keys`. With `deploy`, the contract is deployed by
        `owner` (default `dev_keys[0]`; another key is first given 1,000 ether), which is also a validator,
        together with `validators`, `threshold` of them signing each slash and anchor; the treasury defaults
        to `dev_keys[1]`."""
        keys = tester_keys()
        client = cls(Web3(EmbeddedProvider()), dev_keys=keys, tx_timeout=tx_timeout, backend="embedded")
        if deploy:
            deployer = owner or keys[0]
            if owner is not None:
                client.fund(as_account(owner).address, 1_000 * 10**18)
            client.deploy(
                deployer,
                treasury=treasury or keys[1].address,
                unbonding_delay=unbonding_delay,
                validators=[as_account(deployer).address, *validators],
                threshold=threshold,
            )
        return client

    @classmethod
    def served_dev_chain(cls, owner: LocalAccount | None = None, *, unbonding_delay: int = DEFAULT_UNBONDING_DELAY) -> "ChainClient":
        """The embedded chain as it is served to other processes (`validator run --embedded-chain`, `chain
        serve`): its contract owned, validated for and its treasury held by `owner`, a fresh random key
        unless given, never one of the well-known dev keys, which anyone who reaches the JSON-RPC server
        can sign with (they stay the faucet). The key is `client.owner_key`."""
        owner = owner or Account.create()
        client = cls.embedded(owner=owner, treasury=owner.address, unbonding_delay=unbonding_delay)
        client.owner_key = owner
        return client

    @classmethod
    def connect(
        cls,
        rpc_url: str,
        *,
        address: str | None = None,
        dev_keys: Sequence[Signer] = (),
        tx_timeout: float = DEFAULT_TX_TIMEOUT,
        request_timeout: float = 30.0,
    ) -> "ChainClient":
        """A node by JSON-RPC over HTTP. `address` is the deployed contract (or call `deploy`/`use` later);
        `dev_keys` are prefunded accounts `fund` may send from (anvil's, in tests)."""
        w3 = Web3(BoundedHTTPProvider(rpc_url, request_kwargs={"timeout": request_timeout}))
        return cls(w3, address=address, dev_keys=dev_keys, tx_timeout=tx_timeout, backend="rpc")

    def use(self, address: str) -> "ChainClient":
        """Point this client at an already deployed StagewiseStaking: NoStakingContract where the address holds
        no code, or code that lacks one of its functions (a Solidity contract's code holds the 4-byte selector
        of each of its external functions)."""
        address = to_checksum_address(address)
        code = bytes(self.w3.eth.get_code(address))
        if not code:
            raise NoStakingContract(f"no staking contract at {address} on chain {self.chain_id}: no code there")
        if not all(selector in code for selector in self._selectors):
            raise NoStakingContract(
                f"no staking contract at {address} on chain {self.chain_id}: the contract there is not {STAKING}"
            )
        self._address = address
        self._contract = self.w3.eth.contract(address=address, abi=self.staking.abi)
        return self

    # ----------------------------------------------------------------- chain facts

    @cached_property
    def _selectors(self) -> list[bytes]:
        return [keccak(abi_signature(entry).encode())[:4] for entry in self.staking.abi if entry.get("type") == "function"]

    @cached_property
    def chain_id(self) -> int:
        return int(self.w3.eth.chain_id)

    @property
    def address(self) -> str:
        """The staking contract's address."""
        if self._address is None:
            raise ChainError("no contract: deploy one or pass its address")
        return self._address

    @property
    def contract(self):
        self.address  # noqa: B018 - raises when no contract is set
        return self._contract

    @property
    def block_number(self) -> int:
        return int(self.w3.eth.block_number)

    def timestamp(self) -> int:
        """The latest block's timestamp (what `block.timestamp` was in the last mined block)."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def balance_of(self, address: str) -> int:
        return int(self.w3.eth.get_balance(to_checksum_address(address)))

    # ----------------------------------------------------------------- deploy and owner

    def deploy(
        self,
        owner: Signer,
        *,
        treasury: str | None = None,
        unbonding_delay: int = DEFAULT_UNBONDING_DELAY,
        validators: Iterable[str] = (),
        threshold: int = 1,
    ) -> str:
        """Deploy StagewiseStaking with `owner` as owner, add `validators` and require `threshold` of them to
        sign each slash and anchor (no threshold is set without validators), and use it. Returns its address."""
        owner_address = as_account(owner).address
        result = self.deploy_artifact(owner, self.staking, treasury or owner_address, int(unbonding_delay))
        self.use(result.contract_address)
        validators = list(validators)
        for validator in validators:
            self.add_validator(owner, validator)
        if validators:
            self.set_threshold(owner, threshold)
        log.debug("deployed %s at %s on chain %d", STAKING, self._address, self.chain_id)  # callers say it once
        return self.address

    def add_validator(self, owner: Signer, validator: str) -> TxResult:
        return self._transact(owner, "addValidator", to_checksum_address(validator))

    def remove_validator(self, owner: Signer, validator: str) -> TxResult:
        return self._transact(owner, "removeValidator", to_checksum_address(validator))

    def set_threshold(self, owner: Signer, threshold: int) -> TxResult:
        """Require `threshold` distinct validators' signatures on every slash and anchor."""
        return self._transact(owner, "setThreshold", int(threshold))

    def announce_recovery(self, owner: Signer, to: str, amount: int) -> TxResult:
        """Announce taking `amount` wei of the reward pool back; executable after the contract's delay."""
        return self._transact(owner, "announceRecovery", to_checksum_address(to), int(amount))

    def cancel_recovery(self, owner: Signer) -> TxResult:
        return self._transact(owner, "cancelRecovery")

    def execute_recovery(self, owner: Signer) -> TxResult:
        return self._transact(owner, "executeRecovery")

    def set_treasury(self, owner: Signer, treasury: str) -> TxResult:
        return self._transact(owner, "setTreasury", to_checksum_address(treasury))

    def transfer_ownership(self, owner: Signer, new_owner: str) -> TxResult:
        return self._transact(owner, "transferOwnership", to_checksum_address(new_owner))

    # ----------------------------------------------------------------- workers

    def stake(self, key: Signer, amount: int) -> TxResult:
        """Add `amount` wei to the sender's active stake."""
        return self._transact(key, "stake", value=int(amount))

    def request_unstake(self, key: Signer, amount: int) -> TxResult:
        """Move `amount` wei of active stake into unbonding; withdrawable after the unbonding delay."""
        return self._transact(key, "requestUnstake", int(amount))

    def withdraw(self, key: Signer) -> TxResult:
        """Pay out everything whose unbonding delay has passed."""
        return self._transact(key, "withdraw")

    def claim(self, key: Signer, cumulative_amount: int, proof: Sequence[bytes]) -> TxResult:
        """Claim the part of `cumulative_amount` (the sender's leaf in the latest rewards root) not yet paid."""
        return self._transact(key, "claim", int(cumulative_amount), [_bytes32(p) for p in proof])

    def fund_rewards(self, key: Signer, amount: int) -> TxResult:
        return self._transact(key, "fundRewards", value=int(amount))

    # ----------------------------------------------------------------- validators

    @property
    def domain(self) -> OrderDomain:
        """The EIP-712 domain slash and anchor orders for this contract are signed in."""
        return OrderDomain(self.chain_id, self.address)

    def order_deadline(self, ttl: int = ORDER_TTL) -> int:
        """A deadline `ttl` seconds after the chain's latest block."""
        return self.timestamp() + int(ttl)

    def slash(self, sender: Signer, order: SlashOrder, signatures: bytes) -> TxResult:
        """Execute a slash order that validators signed (`signatures` as `pack_signatures` packs them): up to
        `order.amount` wei of the worker's stake to the treasury; once per evidence hash. `sender` only pays gas."""
        return self._transact(
            sender, "slash", to_checksum_address(order.worker), int(order.amount), _bytes32(order.evidence_hash),
            int(order.deadline), bytes(signatures),
        )

    def anchor(self, sender: Signer, order: AnchorOrder, signatures: bytes) -> TxResult:
        """Execute an anchor order that validators signed: the epoch after the latest anchored one."""
        return self._transact(
            sender, "anchor", int(order.epoch), _bytes32(order.entries_root), _bytes32(order.rewards_root),
            int(order.entry_count), int(order.deadline), bytes(signatures),
        )

    def signed_slash(
        self, sender: Signer, signers: Sequence[Signer], worker: str, amount: int, evidence_hash: bytes
    ) -> TxResult:
        """Sign a slash order with every key of `signers` here and execute it (tests, benches, one-process
        devnets; a validator network collects the signatures through its outbox)."""
        order = SlashOrder(to_checksum_address(worker), int(amount), _bytes32(evidence_hash), self.order_deadline())
        return self.slash(sender, order, self.sign_all(order, signers))

    def signed_anchor(
        self, sender: Signer, signers: Sequence[Signer], epoch: int, entries_root: bytes, rewards_root: bytes,
        entry_count: int,
    ) -> TxResult:
        """Sign an anchor order with every key of `signers` here and execute it."""
        order = AnchorOrder(int(epoch), _bytes32(entries_root), _bytes32(rewards_root), int(entry_count),
                            self.order_deadline())
        return self.anchor(sender, order, self.sign_all(order, signers))

    def sign_all(self, order: SlashOrder | AnchorOrder, signers: Sequence[Signer]) -> bytes:
        """Every key's signature of `order` in this contract's domain, packed in ascending signer order."""
        return pack_signatures({as_account(k).address: sign_order(k, order, self.domain) for k in signers})

    # ----------------------------------------------------------------- reads

    def stake_of(self, address: str, block: int | str = "latest") -> int:
        """Active stake in wei (what stands behind a worker's receipts; unbonding stake does not)."""
        return int(self.contract.functions.stakeOf(to_checksum_address(address)).call(block_identifier=block))

    def stake_info(self, address: str) -> StakeInfo:
        address = to_checksum_address(address)
        f = self.contract.functions
        return StakeInfo(
            active=int(f.stakeOf(address).call()),
            unbonding=int(f.unbondingOf(address).call()),
            release_at=int(f.releaseAtOf(address).call()),
        )

    def is_validator(self, address: str) -> bool:
        return bool(self.contract.functions.isValidator(to_checksum_address(address)).call())

    def threshold(self) -> int:
        """How many distinct validators must sign a slash or an anchor (0: none set, neither can happen)."""
        return int(self.contract.functions.threshold().call())

    def validator_count(self) -> int:
        return int(self.contract.functions.validatorCount().call())

    def pending_recovery(self) -> PendingRecovery:
        f = self.contract.functions
        return PendingRecovery(
            to=to_checksum_address(f.recoveryTo().call()),
            amount=int(f.recoveryAmount().call()),
            executable_at=int(f.recoveryAt().call()),
        )

    def owner(self) -> str:
        return to_checksum_address(self.contract.functions.owner().call())

    def treasury(self) -> str:
        return to_checksum_address(self.contract.functions.treasury().call())

    def unbonding_delay(self) -> int:
        return int(self.contract.functions.unbondingDelay().call())

    def claimed_of(self, address: str) -> int:
        return int(self.contract.functions.claimedOf(to_checksum_address(address)).call())

    def reward_pool(self) -> int:
        return int(self.contract.functions.rewardPool().call())

    def evidence_used(self, evidence_hash: bytes) -> bool:
        return bool(self.contract.functions.evidenceUsed(_bytes32(evidence_hash)).call())

    def latest_anchor(self) -> AnchorInfo:
        f = self.contract.functions
        return AnchorInfo(
            count=int(f.anchorCount().call()),
            latest_epoch=int(f.latestEpoch().call()),
            rewards_root=bytes(f.latestRewardsRoot().call()),
        )

    def entries_root_of(self, epoch: int) -> bytes:
        return bytes(self.contract.functions.entriesRootOf(int(epoch)).call())

    # ----------------------------------------------------------------- dev chains

    def fund(self, address: str, amount: int, *, from_key: Signer | None = None) -> TxResult:
        """Send `amount` wei of native currency to `address` (from a prefunded dev account by default)."""
        sender = from_key or (self.dev_keys[0] if self.dev_keys else None)
        if sender is None:
            raise ChainError("no funded key to send from: pass from_key")
        return self._send(sender, to=to_checksum_address(address), value=int(amount), data=b"", label="fund")

    def advance_time(self, seconds: int) -> None:
        """Move the dev chain's clock forward and mine a block (anvil, embedded, or embedded served by URL)."""
        for method, params in (("evm_increaseTime", [int(seconds)]), ("evm_mine", [])):
            response = self.w3.provider.make_request(method, params)
            if "error" in response:
                raise ChainError(f"{method} is not supported by this node: {response['error']}")

    # ----------------------------------------------------------------- generic transactions

    def deploy_artifact(self, key: Signer, artifact: Artifact, *args: Any, value: int = 0) -> TxResult:
        """Deploy any compiled contract (tests and benches deploy their helper contracts with this)."""
        self.errors.add_abi(artifact.abi)
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        data = factory.constructor(*args).data_in_transaction
        return self._send(key, to=None, value=value, data=data, label=f"deploy {artifact.name}")

    def contract_at(self, artifact: Artifact, address: str):
        """A web3 contract object for a helper contract; its errors join the decoder."""
        self.errors.add_abi(artifact.abi)
        return self.w3.eth.contract(address=to_checksum_address(address), abi=artifact.abi)

    def transact(self, key: Signer, call, *, value: int = 0) -> TxResult:
        """Sign and send a bound contract function call (`contract.functions.f(args)`)."""
        data = call._encode_transaction_data()
        return self._send(key, to=call.address, value=value, data=data, label=call.fn_name)

    def _transact(self, key: Signer, function: str, *args: Any, value: int = 0) -> TxResult:
        return self.transact(key, getattr(self.contract.functions, function)(*args), value=value)

    def _send(self, key: Signer, *, to: str | None, value: int, data: bytes | str, label: str) -> TxResult:
        account = as_account(key)
        sender = account.address
        tx: dict[str, Any] = {"from": sender, "value": value, "data": data}
        if to is not None:
            tx["to"] = to
        try:
            gas = int(self.w3.eth.estimate_gas(tx))
        except ContractLogicError as error:
            raise self._revert_of(error, label) from None
        tx.update(
            gas=gas + gas // 5 + 5_000,
            chainId=self.chain_id,
            maxPriorityFeePerGas=PRIORITY_FEE,
            maxFeePerGas=2 * int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0) + PRIORITY_FEE,
        )
        del tx["from"]
        with self._send_lock:
            for attempt in range(NONCE_ATTEMPTS):
                # The local counter covers our own transactions the node has not counted yet; the node's count
                # covers another client (or process) that sent with the same key meanwhile.
                nonce = max(self._nonces.get(sender, 0), int(self.w3.eth.get_transaction_count(sender, "pending")))
                tx["nonce"] = nonce
                signed = account.sign_transaction(tx)
                try:
                    tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
                except Exception as error:
                    self._nonces.pop(sender, None)
                    if attempt + 1 < NONCE_ATTEMPTS and _is_nonce_clash(error):
                        log.info("%s: nonce %d of %s was taken meanwhile; retrying", label, nonce, sender)
                        continue
                    raise
                self._nonces[sender] = nonce + 1
                break
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.tx_timeout, poll_latency=0.05)
        except TimeExhausted:
            raise TransactionTimeout(
                f"{label}: no receipt for 0x{bytes(tx_hash).hex()} after {self.tx_timeout:.0f} s"
            ) from None
        if receipt["status"] != 1:
            raise self._replay_failure(tx, sender, receipt, label)
        events = tuple(
            e
            for e in (self._decode_log(entry) for entry in receipt["logs"] if entry["address"] == self._address)
            if e is not None
        )
        contract_address = receipt.get("contractAddress")
        log.debug("%s by %s mined in block %d (gas %d)", label, sender, receipt["blockNumber"], receipt["gasUsed"])
        return TxResult(
            tx_hash="0x" + bytes(receipt["transactionHash"]).hex(),
            block_number=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            fee=int(receipt["gasUsed"]) * int(receipt.get("effectiveGasPrice") or 0),
            events=events,
            contract_address=to_checksum_address(contract_address) if contract_address else None,
        )

    def _revert_of(self, error: ContractLogicError, label: str) -> ChainError:
        data = error.data
        if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
            return self.errors.decode(bytes.fromhex(data[2:]), label)
        return ChainError(f"{label}: {error.message or error}")

    def _replay_failure(self, tx: dict[str, Any], sender: str, receipt: Any, label: str) -> ChainError:
        """A transaction that passed simulation but reverted when mined: replay it for the reason."""
        call = {k: tx[k] for k in ("to", "value", "data") if k in tx} | {"from": sender}
        try:
            self.w3.eth.call(call, int(receipt["blockNumber"]) - 1)
        except ContractLogicError as error:
            return self._revert_of(error, label)
        except Exception:  # noqa: BLE001 - the node may not keep old state; report the bare failure
            pass
        return ChainError(f"{label}: transaction 0x{bytes(receipt['transactionHash']).hex()} reverted")


def _is_nonce_clash(error: Exception) -> bool:
    """What nodes answer when a nonce is already used: anvil "nonce too low", geth "already known",
    eth-tester "Invalid transaction nonce"."""
    text = str(error).lower()
    return "nonce" in text or "already known" in text or "replacement transaction underpriced" in text


def _bytes32(value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = bytes.fromhex(value.removeprefix("0x"))
    value = bytes(value)
    if len(value) != 32:
        raise ValueError(f"expected 32 bytes, got {len(value)}")
    return value

