"""Commands for the staking contract: `stagewise stake | unstake | withdraw | claim` and `stagewise chain ...`.

Each command signs with a keystore v3 file (`--keystore`, env STAGEWISE_KEYSTORE, default the wallet's
<data dir>/keys/worker.json; password from --password-file, STAGEWISE_KEYSTORE_PASSWORD or a prompt), talks to
`--rpc-url` (env STAGEWISE_RPC_URL) and the contract `--contract` (env STAGEWISE_CONTRACT). `chain deploy` and
`chain serve` remember the node and contract in <data dir>/chain.json, which later commands fall back to.
Each prints one line that says what happened. Keys are never printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ledger.amounts import ether_and_wei
from ledger import json_input
from node import settings
from node.protocol.signing import SigningKey

RPC_ENV = "STAGEWISE_RPC_URL"
CONTRACT_ENV = "STAGEWISE_CONTRACT"
KEYSTORE_ENV = "STAGEWISE_KEYSTORE"
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
        raise argparse.ArgumentTypeError(f"not an amount: {text!r} (try 1.5, 1.5eth, 20gwei or 1000wei)") from None
    if value != value.to_integral_value() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole, non-negative number of wei")
    return int(value)


def _when(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ------------------------------------------------------------------------------------------------ config


def chain_file() -> Path:
    return settings.data_dir() / "chain.json"


def remembered() -> dict[str, Any]:
    path = chain_file()
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def remember(rpc_url: str, chain_id: int, contract: str) -> Path:
    path = chain_file()
    path.write_text(json.dumps({"rpc_url": rpc_url, "chain_id": chain_id, "contract": contract}, indent=2) + "\n")
    return path


def _rpc_url(args: argparse.Namespace) -> str:
    return args.rpc_url or os.environ.get(RPC_ENV) or remembered().get("rpc_url") or DEFAULT_RPC_URL


def _contract(args: argparse.Namespace) -> str:
    contract = args.contract or os.environ.get(CONTRACT_ENV) or remembered().get("contract")
    if not contract:
        raise _error(f"no contract address: pass --contract, set {CONTRACT_ENV}, or run `stagewise chain deploy`")
    return contract


def load_key(keystore: Path | None, password_file: Path | None):
    """Unlock the signing key (the wallet module reads keystore v3 and the password)."""
    from node import wallet

    path = keystore or (Path(os.environ[KEYSTORE_ENV]) if os.environ.get(KEYSTORE_ENV) else None)
    try:
        return wallet.unlock(path or wallet.default_keystore_path(), password_file)
    except wallet.WalletError as error:
        raise _error(str(error)) from None


def _error(message: str):
    from node.cli.main import CommandError

    return CommandError(message)


def _client(args: argparse.Namespace, *, with_contract: bool = True):
    from ledger.chain.client import ChainClient
    from ledger.chain.errors import ChainError

    url = _rpc_url(args)
    try:
        client = ChainClient.connect(url, tx_timeout=args.timeout)
        client.chain_id  # noqa: B018 - fail here, clearly, when the node is unreachable
        if with_contract:
            client.use(_contract(args))
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


def cmd_deploy(args: argparse.Namespace) -> int:
    client = _client(args, with_contract=False)
    key = load_key(args.keystore, args.password_file)
    validators = args.validator or [key.address]
    address = _run(
        lambda: client.deploy(
            key, treasury=args.treasury or key.address, unbonding_delay=args.unbonding_delay, validators=validators
        )
    )
    saved = remember(_rpc_url(args), client.chain_id, address)
    print(
        f"deployed StagewiseStaking at {address} on chain {client.chain_id} (owner {key.address}, "
        f"validators {', '.join(validators)}, treasury {args.treasury or key.address}, "
        f"unbonding delay {args.unbonding_delay} s); saved to {saved}"
    )
    return 0


def cmd_stake(args: argparse.Namespace) -> int:
    amount = _amount(args)
    client = _client(args)
    key = load_key(args.keystore, args.password_file)
    result = _run(lambda: client.stake(key, amount))
    total = result.events[0].total_stake
    print(f"staked {ether_and_wei(amount)} from {key.address}: active stake {ether_and_wei(total)} (tx {result.tx_hash})")
    return 0


def cmd_unstake(args: argparse.Namespace) -> int:
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


def cmd_withdraw(args: argparse.Namespace) -> int:
    from ledger.chain.errors import ContractRevert

    client = _client(args)
    key = load_key(args.keystore, args.password_file)
    try:
        result = client.withdraw(key)
    except ContractRevert as revert:
        if revert.name == "UnbondingNotElapsed":
            raise _error(f"{key.address} can withdraw from {_when(revert.args_['releaseAt'])}, not yet") from None
        if revert.name == "NothingToWithdraw":
            raise _error(f"{key.address} has nothing unbonding: request it first with `stagewise unstake`") from None
        raise _error(str(revert)) from None
    except Exception as error:  # noqa: BLE001
        raise _error(str(error)) from None
    print(f"withdrew {ether_and_wei(result.events[0].amount)} to {key.address} (tx {result.tx_hash})")
    return 0


def cmd_claim(args: argparse.Namespace) -> int:
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


def _claim_proof(args: argparse.Namespace, address: str, epoch: int) -> tuple[int, list[bytes], int | None]:
    """(cumulative wei, proof, epoch) from --proof-file, from --amount/--proof, or from the ledger."""
    if args.proof_file:
        try:
            data = json_input.loads(Path(args.proof_file).read_bytes())
            cumulative = int(data["cumulative"])
            proof = [bytes.fromhex(p.removeprefix("0x")) for p in data["proof"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise _error(f"cannot read the proof file {args.proof_file}: {error}") from None
        worker = data.get("worker")
        if worker and worker.lower() != address.lower():
            raise _error(f"the proof file is for {worker}, the keystore holds {address}")
        return cumulative, proof, data.get("epoch")
    if args.amount is not None:
        try:
            proof = [bytes.fromhex(p.strip().removeprefix("0x")) for p in (args.proof or "").split(",") if p.strip()]
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
        return int(data["cumulative"]), [bytes.fromhex(p.removeprefix("0x")) for p in data["proof"]], int(data["epoch"])
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


def cmd_info(args: argparse.Namespace) -> int:
    client = _client(args)
    anchor = _run(client.latest_anchor)
    line = (
        f"StagewiseStaking {client.address} on chain {client.chain_id}: owner {client.owner()}, "
        f"unbonding delay {client.unbonding_delay()} s, reward pool {ether_and_wei(client.reward_pool())}, "
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


def cmd_fund(args: argparse.Namespace) -> int:
    """Dev chains: send native currency from a prefunded dev account (or from --keystore)."""
    client = _client(args, with_contract=False)
    sender = _sender(args, client)
    result = _run(lambda: client.fund(args.to, args.amount, from_key=sender))
    print(f"sent {ether_and_wei(args.amount)} from {sender.address} to {args.to} (tx {result.tx_hash})")
    return 0


def cmd_fund_rewards(args: argparse.Namespace) -> int:
    """Pay into the contract's reward pool, which every `claim` is paid from."""
    client = _client(args)
    sender = _sender(args, client)
    result = _run(lambda: client.fund_rewards(sender, args.amount))
    print(f"added {ether_and_wei(args.amount)} from {sender.address} to the reward pool of {client.address}: it holds "
          f"{ether_and_wei(_run(client.reward_pool))} (tx {result.tx_hash})")
    return 0


def _sender(args: argparse.Namespace, client):
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


def cmd_serve(args: argparse.Namespace) -> int:
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


def _amount(args: argparse.Namespace) -> int:
    amount = args.amount if args.amount is not None else args.amount_pos
    if amount is None:
        raise _error("give an amount, e.g. `1.5` (ETH), `20gwei` or `1000wei`")
    if amount == 0:
        raise _error("the amount must be more than zero")
    return amount


# ------------------------------------------------------------------------------------------------ parser


def _common(parser: argparse.ArgumentParser, *, contract: bool = True, key: bool = True) -> None:
    parser.add_argument(
        "--rpc-url",
        help=f"JSON-RPC URL of the chain (env {RPC_ENV}; default <data dir>/chain.json, else {DEFAULT_RPC_URL})",
    )
    if contract:
        parser.add_argument(
            "--contract", help=f"staking contract address (env {CONTRACT_ENV}; default <data dir>/chain.json)"
        )
    if key:
        parser.add_argument(
            "--keystore",
            type=Path,
            help=f"keystore v3 file that signs (env {KEYSTORE_ENV}; default <data dir>/keys/worker.json)",
        )
        parser.add_argument(
            "--password-file",
            type=Path,
            help="read the keystore password from this file (else STAGEWISE_KEYSTORE_PASSWORD, else a prompt)",
        )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for a transaction's receipt (default 60)"
    )


def _amount_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "amount_pos", nargs="?", type=parse_amount, metavar="AMOUNT", help=f"{what}: 1.5 (ETH), 1.5eth, 20gwei, 1000wei"
    )
    parser.add_argument("--amount", type=parse_amount, help="the same, as an option")


def _worker_commands(subparsers: argparse._SubParsersAction) -> None:
    stake = subparsers.add_parser(
        "stake", help="stake native currency on the contract", description="Add to this key's active stake."
    )
    _amount_args(stake, "how much to stake")
    _common(stake)
    stake.set_defaults(func=cmd_stake)

    unstake = subparsers.add_parser(
        "unstake",
        help="start unbonding stake",
        description="Move active stake into unbonding; withdraw it after the delay.",
    )
    _amount_args(unstake, "how much to unbond")
    _common(unstake)
    unstake.set_defaults(func=cmd_unstake)

    withdraw = subparsers.add_parser("withdraw", help="withdraw stake whose unbonding delay has passed")
    _common(withdraw)
    withdraw.set_defaults(func=cmd_withdraw)

    claim = subparsers.add_parser(
        "claim",
        help="claim rewards with a Merkle proof",
        description=(
            "Claim what this key earned in the latest anchored epoch and has not been paid. The proof comes from "
            "--proof-file (JSON: cumulative, proof, optional worker/epoch: what the ledger's reward proof gives), "
            "from --amount and --proof, from a validator's API (--validator URL), or else from the ledger database "
            "(--db / STAGEWISE_DB). Whatever its source, the proof is checked against the rewards root anchored on "
            "chain before anything is sent."
        ),
    )
    claim.add_argument("--proof-file", type=Path, help="reward proof JSON")
    claim.add_argument("--amount", type=int, help="cumulative reward in wei, as in the rewards root")
    claim.add_argument("--proof", help="comma-separated sibling hashes (0x…)")
    claim.add_argument("--validator", default=os.environ.get("STAGEWISE_VALIDATOR_URL"),
                       help="fetch the proof from this validator's API (env STAGEWISE_VALIDATOR_URL)")
    _common(claim)
    claim.set_defaults(func=cmd_claim)


def register(subparsers: argparse._SubParsersAction) -> None:
    _worker_commands(subparsers)

    chain = subparsers.add_parser(
        "chain",
        help="deploy, serve and inspect the staking contract",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    sub = chain.add_subparsers(title="chain commands", metavar="COMMAND")
    chain.set_defaults(func=lambda _args: chain.print_help() or 2)

    deploy = sub.add_parser("deploy", help="deploy StagewiseStaking; the keystore's key becomes its owner")
    deploy.add_argument("--treasury", help="where slashed stake goes (default: the owner)")
    deploy.add_argument(
        "--unbonding-delay",
        type=int,
        default=7 * 24 * 3600,
        help="seconds between unstake and withdraw (default 7 days)",
    )
    deploy.add_argument("--validator", action="append", help="a validator address (repeat; default: the owner)")
    _common(deploy, contract=False)
    deploy.set_defaults(func=cmd_deploy)

    serve = sub.add_parser("serve", help="run an in-process dev chain with the contract deployed, over JSON-RPC")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8545, help="port (default 8545; 0 picks a free one)")
    serve.add_argument("--unbonding-delay", type=int, default=60, help="seconds (default 60: a dev chain)")
    serve.add_argument("--test-methods", action="store_true",
                       help="also serve evm_* and testing_* (move the clock, snapshots): for a chain nobody else "
                       "reaches; refused by default, since they let a worker skip its unbonding delay")
    serve.set_defaults(func=cmd_serve)

    info = sub.add_parser("info", help="the contract's state, and an address's stake")
    info.add_argument("address", nargs="?", help="a worker address to show")
    _common(info, key=False)
    info.set_defaults(func=cmd_info)

    fund = sub.add_parser("fund", help="dev chains: send native currency to an address from a prefunded account")
    fund.add_argument("to", help="recipient address")
    fund.add_argument("amount", type=parse_amount, help="1.5 (ETH), 20gwei, 1000wei")
    _common(fund, contract=False)
    fund.set_defaults(func=cmd_fund)

    fund_rewards = sub.add_parser(
        "fund-rewards", help="pay into the contract's reward pool, which workers' claims are paid from",
        description="Pay AMOUNT into StagewiseStaking's reward pool (fundRewards). Claims revert with "
        "InsufficientRewardPool until the pool covers them. Sends from --keystore, or on a dev chain from "
        "its first prefunded account.",
    )
    fund_rewards.add_argument("amount", type=parse_amount, help="1.5 (ETH), 20gwei, 1000wei")
    _common(fund_rewards)
    fund_rewards.set_defaults(func=cmd_fund_rewards)

    # The worker commands also live under `chain` (`stagewise chain stake ...`).
    _worker_commands(sub)
