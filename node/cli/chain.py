"""Commands for the staking contract: `stagewise stake | unstake | withdraw | claim` and `stagewise chain ...`.

Each command signs with a keystore v3 file (`--keystore`, env STAGEWISE_KEYSTORE, default the wallet's
<data dir>/keys/worker.json; password from --password-file, STAGEWISE_KEYSTORE_PASSWORD or a prompt), talks to
`--rpc-url` (env STAGEWISE_RPC_URL) and the contract `--contract` (env STAGEWISE_CONTRACT). `chain deploy` and
`chain serve` remember the node and contract in <data dir>/chain.json, which later commands fall back to.
Each prints one line that says what happened. Keys are never printed.
"""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal, InvalidOperation
from pathlib import Path

import click

from ledger import json_input
from ledger.amounts import ether_and_wei
from node import settings
from node.cli.options import CONTEXT_SETTINGS, PATH, Parsed, arguments, env_option, help_group
from node.settings import chain_file
from node.settings import remember_chain as remember
from node.settings import remembered_chain as remembered

DEFAULT_RPC_URL = "http://127.0.0.1:8545"
UNITS = {"wei": 1, "gwei": 10**9, "eth": 10**18, "ether": 10**18}


# ------------------------------------------------------------------------------------------------ parsing


def parse_amount(text: str) -> int:
    """'1.5' or '1.5eth' (ether), '20gwei', '1000wei' -> wei. Exact: no floats."""
    raw = text.strip().lower().replace("_", "")
    unit = next((u for u in sorted(UNITS, key=len, reverse=True) if raw.endswith(u)), "eth")
    number = raw[: len(raw) - len(unit)] if raw.endswith(unit) else raw
    try:
        value = Decimal(number.strip()) * UNITS[unit]
    except InvalidOperation:
        raise ValueError(f"not an amount: {text!r} (try 1.5, 1.5eth, 20gwei or 1000wei)") from None
    if value != value.to_integral_value() or value < 0:
        raise ValueError(f"{text!r} is not a whole, non-negative number of wei")
    return int(value)


def _when(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------------------------------------ config


def _rpc_url(args) -> str:
    return args.rpc_url or remembered().get("rpc_url") or DEFAULT_RPC_URL


def _contract(args) -> str:
    contract = args.contract or remembered().get("contract")
    if not contract:
        raise _error(f"no contract address: pass --contract, set {settings.CONTRACT.name}, or run `stagewise chain deploy`")
    return contract


def load_key(keystore: Path | None, password_file: Path | None):
    """Unlock the signing key (the wallet module reads keystore v3 and the password)."""
    from node import wallet

    path = keystore or settings.KEYSTORE.get()
    try:
        return wallet.unlock(path or wallet.default_keystore_path(), password_file)
    except wallet.WalletError as error:
        raise _error(str(error)) from None


def _error(message: str):
    from node.errors import CommandError

    return CommandError(message)


def _client(args, *, with_contract: bool = True):
    from ledger.chain.client import ChainClient
    from ledger.chain.errors import ChainError, NoStakingContract
    from node.errors import FIND_THE_STAKING_CONTRACT

    url = _rpc_url(args)
    try:
        client = ChainClient.connect(url, tx_timeout=args.timeout)
        client.chain_id  # noqa: B018 - fail here, clearly, when the node is unreachable
        if with_contract:
            client.use(_contract(args))
    except NoStakingContract as error:
        raise _error(f"{error}; {FIND_THE_STAKING_CONTRACT}") from None
    except ChainError as error:
        raise _error(str(error)) from None
    except Exception as error:  # noqa: BLE001 - connection refused, DNS, timeouts: one line for the user
        raise _error(f"cannot reach the chain at {url}: {type(error).__name__}: {error}") from None
    return client


def _run(action):
    """Run a chain action, turning reverts and node errors into one-line command errors."""
    from ledger.chain.errors import ChainError

    try:
        return action()
    except ChainError as error:
        raise _error(str(error)) from None


# ------------------------------------------------------------------------------------------------ commands


def cmd_deploy(args) -> int:
    client = _client(args, with_contract=False)
    key = load_key(args.keystore, args.password_file)
    gone = ""
    if args.keep_existing:
        kept, gone = _kept_contract(client, key.address)
        if kept:
            saved = remember(_rpc_url(args), client.chain_id, kept)
            print(f"StagewiseStaking already deployed at {kept} on chain {client.chain_id} (owner {key.address}): "
                  f"kept, nothing sent; saved to {saved}")
            return 0
    validators = args.validator or [key.address]
    if not 1 <= args.threshold <= len(validators):
        raise _error(f"--threshold {args.threshold}: between 1 and the {len(validators)} validator(s) given; lower it or add --validator")
    address = _run(
        lambda: client.deploy(key, treasury=args.treasury or key.address, unbonding_delay=args.unbonding_delay,
                              validators=validators, threshold=args.threshold)
    )
    saved = remember(_rpc_url(args), client.chain_id, address)
    print(
        f"deployed StagewiseStaking at {address} on chain {client.chain_id} (owner {key.address}, "
        f"validators {', '.join(validators)}, {args.threshold} of them sign each slash and anchor, treasury {args.treasury or key.address}, "
        f"unbonding delay {args.unbonding_delay} s){gone}; saved to {saved}"
    )
    return 0


def _kept_contract(client, owner: str) -> tuple[str | None, str]:
    """--keep-existing: the contract chain.json remembers when this chain has it (its code at that address,
    owned by `owner`), else None and why a fresh one is deployed (a chain restarted empty has no code there)."""
    known = remembered()
    contract, chain_id = known.get("contract"), known.get("chain_id")
    if not contract:
        return None, ""
    if chain_id != client.chain_id:
        return None, f" (the remembered {contract} is on chain {chain_id}, not this one)"
    if not _run(lambda: client.w3.eth.get_code(contract)):
        return None, f" (the remembered {contract} has no code on this chain: it restarted empty)"
    _run(lambda: client.use(contract))
    actual = _run(client.owner)
    if actual.lower() != owner.lower():
        raise _error(f"the remembered contract {contract} on chain {client.chain_id} is owned by {actual}, not by "
                     f"the keystore's {owner}: pass the owner's --keystore, or move {chain_file()} away to deploy anew")
    return client.address, ""


def cmd_stake(args) -> int:
    amount = _amount(args)
    client = _client(args)
    key = load_key(args.keystore, args.password_file)
    if args.top_up:
        active = _run(lambda: client.stake_info(key.address).active)
        if active >= amount:
            print(f"{key.address} has {ether_and_wei(active)} of active stake, at least {ether_and_wei(amount)}: "
                  "nothing staked")
            return 0
        amount -= active
    balance = _run(lambda: client.balance_of(key.address))
    if amount >= balance:  # checked before sending: the node's refusal names neither figure
        raise _error(
            f"{key.address} holds {ether_and_wei(balance)} on chain {client.chain_id}, not enough to stake "
            f"{ether_and_wei(amount)} and pay the gas; stake less, or send more to {key.address} first "
            "(nothing was sent)"
        )
    result = _run(lambda: client.stake(key, amount))
    total = result.events[0].total_stake
    print(f"staked {ether_and_wei(amount)} from {key.address}: active stake {ether_and_wei(total)} (tx {result.tx_hash})")
    return 0


def cmd_unstake(args) -> int:
    amount = _amount(args)
    client = _client(args)
    key = load_key(args.keystore, args.password_file)
    result = _run(lambda: client.request_unstake(key, amount))
    event = result.events[0]
    print(
        f"unbonding {ether_and_wei(amount)} of {key.address}: {ether_and_wei(event.total_unbonding)} withdrawable from "
        f"{_when(event.release_at)} with `stagewise withdraw` (tx {result.tx_hash})"
    )
    return 0


def cmd_withdraw(args) -> int:
    from ledger.chain.errors import ContractRevert

    client = _client(args)
    key = load_key(args.keystore, args.password_file)
    try:
        result = client.withdraw(key)
    except ContractRevert as revert:
        if revert.name == "UnbondingNotElapsed":
            raise _error(_not_yet(client, key.address, revert.args_["releaseAt"])) from None
        if revert.name == "NothingToWithdraw":
            raise _error(f"{key.address} has nothing unbonding: request it first with `stagewise unstake`") from None
        raise _error(str(revert)) from None
    except Exception as error:  # noqa: BLE001
        raise _error(str(error)) from None
    print(f"withdrew {ether_and_wei(result.events[0].amount)} to {key.address} (tx {result.tx_hash})")
    return 0


def _not_yet(client, address: str, release_at: int) -> str:
    """Why a withdrawal is early, by the chain's clock: the latest block's time, which on a dev chain stands
    still until a transaction mines a new block."""
    latest = _run(client.timestamp)
    return (
        f"{address} can withdraw from {_when(release_at)}; the chain's latest block is from {_when(latest)} "
        f"({max(release_at - latest, 0)} s earlier) and the contract goes by block time, which on a dev chain moves "
        "only when a block is mined (by any transaction): run `stagewise withdraw` again once a later block exists"
    )


def cmd_claim(args) -> int:
    from ledger import merkle

    client = _client(args)
    key = load_key(args.keystore, args.password_file)
    latest = _run(client.latest_anchor)
    if latest.count == 0:
        raise _error("no epoch is anchored on chain yet: there is nothing to claim against")
    cumulative, proof, epoch = _claim_proof(args, key.address, latest.latest_epoch)
    if not merkle.verify_reward(key.address, cumulative, proof, latest.rewards_root):
        raise _error(
            f"this proof (epoch {epoch if epoch is not None else '?'}) is not against the latest anchored rewards "
            f"root (epoch {latest.latest_epoch}): fetch a fresh one"
        )
    already = _run(lambda: client.claimed_of(key.address))
    if cumulative <= already:
        print(f"nothing to claim for {key.address}: {ether_and_wei(already)} of {ether_and_wei(cumulative)} already paid")
        return 0
    result = _run(lambda: client.claim(key, cumulative, proof))
    print(
        f"claimed {ether_and_wei(result.events[0].amount)} for {key.address} "
        f"(cumulative {ether_and_wei(cumulative)}, epoch {latest.latest_epoch}) (tx {result.tx_hash})"
    )
    return 0


def _claim_proof(args, address: str, epoch: int) -> tuple[int, list[bytes], int | None]:
    """(cumulative wei, proof, epoch) from --proof-file, from --amount/--proof, or from the ledger."""
    if args.proof_file:
        try:
            data = json_input.loads(Path(args.proof_file).read_bytes())
            cumulative = int(data["cumulative"])
            proof = [json_input.hex_bytes(p, "proof", length=32) for p in data["proof"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise _error(f"cannot read the proof file {args.proof_file}: {error}") from None
        worker = data.get("worker")
        if worker and worker.lower() != address.lower():
            raise _error(f"the proof file is for {worker}, the keystore holds {address}")
        return cumulative, proof, data.get("epoch")
    if args.amount is not None:
        try:
            proof = [json_input.hex_bytes(p.strip(), "proof", length=32) for p in (args.proof or "").split(",") if p.strip()]
        except ValueError:
            raise _error("--proof takes comma-separated 32-byte hex hashes") from None
        return args.amount, proof, None
    if args.validator:
        return _validator_proof(args.validator, address, epoch)
    return _ledger_proof(address, epoch)


def _validator_proof(base_url: str, address: str, epoch: int) -> tuple[int, list[bytes], int | None]:
    """The proof for `epoch` from a validator's API (GET /v1/workers/{address}/reward-proof). Nothing it says
    is trusted: cmd_claim checks the proof against the root anchored on chain before sending anything."""
    import urllib.error
    import urllib.request

    url = f"{base_url.rstrip('/')}/v1/workers/{address}/reward-proof?epoch={epoch}"
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            data = json_input.read_json_file(response, max_bytes=1 << 20)
    except urllib.error.HTTPError as error:
        try:
            reason = json_input.read_json_file(error, max_bytes=1 << 16)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            reason = f"HTTP {error.code}"
        raise _error(f"the validator at {base_url} has no reward proof for {address} in epoch {epoch}: {reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise _error(f"cannot fetch a reward proof from {base_url}: {getattr(error, 'reason', error)}") from None
    try:
        return int(data["cumulative"]), [json_input.hex_bytes(p, "proof", length=32) for p in data["proof"]], int(data["epoch"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _error(f"the validator at {base_url} answered something that is not a reward proof") from None


def _ledger_proof(address: str, epoch: int) -> tuple[int, list[bytes], int | None]:
    """The proof for `epoch` (the one anchored on chain) from the ledger at --db / STAGEWISE_DB."""
    import asyncio

    from ledger.store import Ledger

    async def read():
        ledger = await Ledger.open(settings.database_url(), migrate=False, must_exist=True)
        try:
            return await ledger.reward_proof(address, epoch)
        finally:
            await ledger.close()

    try:
        proof = asyncio.run(read())
    except Exception as error:  # noqa: BLE001 - no database, no tables: say so
        raise _error(f"cannot read a reward proof from the ledger: {error}") from None
    if proof is None:
        raise _error(f"the ledger has no reward for {address} in epoch {epoch} (the latest anchored on chain)")
    return proof.cumulative, [bytes.fromhex(p[2:]) for p in proof.proof], proof.epoch


def cmd_info(args) -> int:
    client = _client(args)
    anchor = _run(client.latest_anchor)
    line = (
        f"StagewiseStaking {client.address} on chain {client.chain_id}: owner {client.owner()}, "
        f"unbonding delay {client.unbonding_delay()} s, reward pool {ether_and_wei(client.reward_pool())}, "
        f"{client.threshold()} of {client.validator_count()} validators sign a slash or an anchor, "
        f"{anchor.count} anchors (latest epoch {anchor.latest_epoch if anchor.count else '-'})"
    )
    if args.address:
        info = client.stake_info(args.address)
        line += (
            f"; {args.address}: active {ether_and_wei(info.active)}, unbonding {ether_and_wei(info.unbonding)}"
            f", claimed {ether_and_wei(client.claimed_of(args.address))}"
        )
    print(line)
    return 0


def cmd_fund(args) -> int:
    """Dev chains: send native currency from a prefunded dev account (or from --keystore)."""
    client = _client(args, with_contract=False)
    sender = _sender(args, client)
    amount = args.amount
    if args.top_up:
        balance = _run(lambda: client.balance_of(args.to))
        if balance >= amount:
            print(f"{args.to} holds {ether_and_wei(balance)}, at least {ether_and_wei(amount)}: nothing sent")
            return 0
        amount -= balance
    result = _run(lambda: client.fund(args.to, amount, from_key=sender))
    print(f"sent {ether_and_wei(amount)} from {sender.address} to {args.to} (tx {result.tx_hash})")
    return 0


def cmd_fund_rewards(args) -> int:
    """Pay into the contract's reward pool, which every `claim` is paid from."""
    client = _client(args)
    sender = _sender(args, client)
    result = _run(lambda: client.fund_rewards(sender, args.amount))
    print(f"added {ether_and_wei(args.amount)} from {sender.address} to the reward pool of {client.address}: it holds "
          f"{ether_and_wei(_run(client.reward_pool))} (tx {result.tx_hash})")
    return 0


def _sender(args, client):
    """--keystore's key, else on a dev chain its first prefunded account."""
    from ledger.chain.embedded import ANVIL_CHAIN_ID, TESTER_CHAIN_ID, anvil_keys
    from ledger.chain.keys import tester_keys

    if args.keystore:
        return load_key(args.keystore, args.password_file)
    if client.chain_id == TESTER_CHAIN_ID:
        return tester_keys(1)[0]
    if client.chain_id == ANVIL_CHAIN_ID:
        return anvil_keys(1)[0]
    raise _error(f"chain {client.chain_id} is not a dev chain: pass --keystore to send from your own key")


def cmd_serve(args) -> int:
    """Run the embedded chain with the contract deployed, served over JSON-RPC until interrupted."""
    import time

    from ledger.chain.client import ChainClient
    from ledger.chain.embedded import ThreadedChainServer

    client = ChainClient.served_dev_chain(unbonding_delay=args.unbonding_delay)
    owner_file = _save_owner_key(client.owner_key, client.address)
    with ThreadedChainServer(client.w3, args.host, args.port, test_methods=args.test_methods) as server:
        saved = remember(server.url, client.chain_id, client.address)
        print(
            f"embedded chain {client.chain_id} at {server.url}, StagewiseStaking at {client.address} "
            f"(owner and validator {client.owner_key.address}, its key in {owner_file}: "
            f"STAGEWISE_VALIDATOR_KEY=$(cat {owner_file}) stagewise validator run --rpc-url {server.url} "
            f"--contract {client.address} ...); saved to {saved}; Ctrl-C stops it",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def _save_owner_key(key, contract: str) -> Path:
    """The served chain's owner key, readable by this user only: it slashes and anchors on that chain. One
    file per contract, so a second `chain serve` leaves the first one's key alone."""
    from ledger.chain.keys import as_account

    path = chain_file().with_name(f"chain-owner-{contract.lower()}.key")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write("0x" + bytes(as_account(key).key).hex() + "\n")
    return path


def _amount(args) -> int:
    amount = args.amount if args.amount is not None else args.amount_pos
    if amount is None:
        raise _error("give an amount, e.g. `1.5` (ETH), `20gwei` or `1000wei`")
    if amount == 0:
        raise _error("the amount must be more than zero")
    return amount


# ------------------------------------------------------------------------------------------------ parser

AMOUNT = Parsed(parse_amount, "amount")


def _common(*, contract: bool = True, key: bool = True):
    """--rpc-url, --contract, --keystore, --password-file and --timeout, as a command needs them."""
    options = [
        env_option("--rpc-url", variable=settings.RPC_URL, help="JSON-RPC URL of the chain",
                   show_default=f"<data dir>/chain.json, else {DEFAULT_RPC_URL}"),
    ]
    if contract:
        options.append(env_option("--contract", variable=settings.CONTRACT, help="staking contract address",
                                  show_default="<data dir>/chain.json"))
    if key:
        # No envvar= here: STAGEWISE_KEYSTORE is read by load_key, only where a command signs with a keystore
        # (`chain fund` without --keystore sends from a dev chain's prefunded account).
        options.append(click.option("--keystore", type=PATH, show_default="<data dir>/keys/worker.json",
                                    help=f"keystore v3 file that signs (env {settings.KEYSTORE.name})"))
        options.append(click.option("--password-file", type=PATH, help="read the keystore password from this file "
                                    f"(else {settings.KEYSTORE_PASSWORD.name}, else a prompt)"))
    options.append(click.option("--timeout", type=float, default=60.0, help="seconds to wait for a transaction's receipt"))

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def _amount_args(what: str):
    def decorate(function):
        function = click.option("--amount", type=AMOUNT, help=f"{what}, as an option")(function)
        return click.argument("amount_pos", metavar="[AMOUNT]", required=False, type=AMOUNT)(function)

    return decorate


def _command(name: str, handler, **kwargs):
    """A click command whose callback hands the parsed values to `handler`."""

    def decorate(function):
        def callback(**_: object) -> int:
            return handler(arguments())

        callback.__doc__ = function.__doc__
        callback.__click_params__ = getattr(function, "__click_params__", [])
        return click.command(name, context_settings=CONTEXT_SETTINGS, **kwargs)(callback)

    return decorate


@_command("stake", cmd_stake, short_help="stake native currency on the contract")
@_amount_args("how much to stake")
@click.option("--top-up", is_flag=True, help="AMOUNT is the active stake wanted: stake only what is missing, "
              "nothing when it is there already (a set-up script that runs again)")
@_common()
def _stake():
    """Add AMOUNT to this key's active stake: 1.5 (ETH), 1.5eth, 20gwei, 1000wei."""


@_command("unstake", cmd_unstake, short_help="start unbonding stake")
@_amount_args("how much to unbond")
@_common()
def _unstake():
    """Move AMOUNT of active stake into unbonding (1.5 (ETH), 1.5eth, 20gwei, 1000wei); withdraw it after
    the delay."""


@_command("withdraw", cmd_withdraw, short_help="withdraw stake whose unbonding delay has passed")
@_common()
def _withdraw():
    """Withdraw stake whose unbonding delay has passed."""


@_command("claim", cmd_claim, short_help="claim rewards with a Merkle proof")
@click.option("--proof-file", type=PATH, help="reward proof JSON")
@click.option("--amount", type=int, help="cumulative reward in wei, as in the rewards root")
@click.option("--proof", help="comma-separated sibling hashes (0x…)")
@env_option("--validator", variable=settings.VALIDATOR_URL, help="fetch the proof from this validator's API")
@_common()
def _claim():
    """Claim what this key earned in the latest anchored epoch and has not been paid. The proof comes from
    --proof-file (JSON: cumulative, proof, optional worker/epoch: what the ledger's reward proof gives), from
    --amount and --proof, from a validator's API (--validator URL), or else from the ledger database (--db /
    STAGEWISE_DB). Whatever its source, the proof is checked against the rewards root anchored on chain
    before anything is sent."""


@help_group("chain", short_help="deploy, serve and inspect the staking contract")
def chain_group() -> None:
    """Commands for the staking contract. Each command signs with a keystore v3 file (--keystore, env
    STAGEWISE_KEYSTORE, default the wallet's <data dir>/keys/worker.json; password from --password-file,
    STAGEWISE_KEYSTORE_PASSWORD or a prompt), talks to --rpc-url (env STAGEWISE_RPC_URL) and the contract
    --contract (env STAGEWISE_CONTRACT). `chain deploy` and `chain serve` remember the node and contract in
    <data dir>/chain.json, which later commands fall back to. Each prints one line that says what happened.
    Keys are never printed."""


@_command("deploy", cmd_deploy, short_help="deploy StagewiseStaking; the keystore's key becomes its owner")
@click.option("--treasury", help="where slashed stake goes", show_default="the owner")
@click.option("--unbonding-delay", type=int, default=7 * 24 * 3600, help="seconds between unstake and withdraw (7 days)")
@click.option("--validator", multiple=True, help="a validator address (repeatable)", show_default="the owner")
@click.option("--threshold", type=int, default=1, help="how many distinct validators sign each slash and anchor")
@click.option("--keep-existing", is_flag=True, help="when <data dir>/chain.json remembers a contract this chain has "
              "(code at its address, owned by this key), keep it and send nothing; else deploy and remember anew")
@_common(contract=False)
def _deploy():
    """Deploy StagewiseStaking; the keystore's key becomes its owner."""


@_command("serve", cmd_serve, short_help="run an in-process dev chain with the contract deployed, over JSON-RPC")
@click.option("--host", default="127.0.0.1", help="address to listen on")
@click.option("--port", type=int, default=8545, help="port, 0 picks a free one")
@click.option("--unbonding-delay", type=int, default=60, help="seconds (60: a dev chain)")
@click.option("--test-methods", is_flag=True,
              help="also serve evm_* and testing_* (move the clock, snapshots): for a chain nobody else reaches; "
              "refused by default, since they let a worker skip its unbonding delay")
def _serve():
    """Run an in-process dev chain with the contract deployed, served over JSON-RPC until Ctrl-C."""


@_command("info", cmd_info, short_help="the contract's state, and an address's stake")
@click.argument("address", required=False)
@_common(key=False)
def _info():
    """The contract's state, and the stake of ADDRESS (a worker address) when given."""


@_command("fund", cmd_fund, short_help="dev chains: send native currency to an address from a prefunded account")
@click.argument("to")
@click.argument("amount", type=AMOUNT)
@click.option("--top-up", is_flag=True, help="AMOUNT is the balance wanted: send only what is missing")
@_common(contract=False)
def _fund():
    """Dev chains: send AMOUNT (1.5 (ETH), 20gwei, 1000wei) to the address TO from a prefunded dev account
    (or from --keystore)."""


@_command("fund-rewards", cmd_fund_rewards,
          short_help="pay into the contract's reward pool, which workers' claims are paid from")
@click.argument("amount", type=AMOUNT)
@_common()
def _fund_rewards():
    """Pay AMOUNT (1.5 (ETH), 20gwei, 1000wei) into StagewiseStaking's reward pool (fundRewards). Claims
    revert with InsufficientRewardPool until the pool covers them. Sends from --keystore, or on a dev chain
    from its first prefunded account."""


WORKER_COMMANDS = [_stake, _unstake, _withdraw, _claim]
for _command_object in (_deploy, _serve, _info, _fund, _fund_rewards, *WORKER_COMMANDS):
    chain_group.add_command(_command_object)  # the worker commands also live under `chain` (`stagewise chain stake ...`)

COMMANDS = [*WORKER_COMMANDS, chain_group]
