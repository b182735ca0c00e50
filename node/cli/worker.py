"""`stagewise worker run`: serve one stage of a model for a validator, with a staked key."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from node.http.limits import add_http_limit_options, limits_from_args

VALIDATOR_ENV = "STAGEWISE_VALIDATOR_URL"
RPC_ENV = "STAGEWISE_RPC_URL"
CONTRACT_ENV = "STAGEWISE_CONTRACT"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a stage worker (serve layers of a model, sign receipts, earn rewards)",
        description="Run a stage worker. Start with `stagewise wallet new`, stake on chain, then `stagewise worker run`.",
    )
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
    commands = parser.add_subparsers(title="worker commands", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="check the stake, register with a validator and serve the assigned stage until SIGTERM",
        description=(
            "Unlock the keystore, check this key's stake on chain, start a stage server, register with the "
            "validator's orchestrator, serve the stage it assigns (loading only its layers), sign a receipt for "
            "every job and deliver bundles to the validator. SIGTERM or Ctrl-C stops it cleanly: in-flight "
            "sequences get --grace seconds to finish."
        ),
    )
    run.add_argument("--keystore", type=Path, help="keystore v3 file (default <data dir>/keys/worker.json)")
    run.add_argument("--password-file", type=Path, help="keystore password file (else $STAGEWISE_KEYSTORE_PASSWORD, else a prompt)")
    run.add_argument("--validator", default=os.environ.get(VALIDATOR_ENV), help=f"validator base URL (env {VALIDATOR_ENV})")
    run.add_argument("--rpc-url", default=os.environ.get(RPC_ENV), help=f"chain JSON-RPC URL (env {RPC_ENV}; default: the validator's)")
    run.add_argument("--contract", default=os.environ.get(CONTRACT_ENV), help=f"staking contract address (env {CONTRACT_ENV}; default: the validator's)")
    run.add_argument("--min-stake", type=int, help="minimum stake in wei to insist on (default: the validator's)")
    run.add_argument("--host", default="127.0.0.1", help="address the stage server listens on (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=0, help="stage server port (default: a free one)")
    run.add_argument("--public-url", help="URL other stages and the validator use to reach this stage server (default http://HOST:PORT)")
    run.add_argument("--capacity", default="8GiB", type=parse_size, help="memory offered for weights and cache, e.g. 8GiB (default 8GiB)")
    run.add_argument("--throughput", type=float, default=None,
                     help="layer-tokens per second this worker offers, which the orchestrator splits layers by "
                     "(default: measured at start, about a second decoding one layer of the model)")
    run.add_argument("--region", default="local", help="region label used to group nearby workers (default local)")
    run.add_argument("--model-dir", type=Path, action="append", default=[], help="a model directory this worker may serve (repeatable)")
    run.add_argument("--model", choices=["smollm2"], help="a bundled model: smollm2 = SmolLM2-135M-Instruct (converted once into the cache)")
    run.add_argument("--device", default="cpu", help="torch device for the stage (default cpu)")
    run.add_argument("--heartbeat", type=float, default=5.0, help="seconds between heartbeats (default 5)")
    run.add_argument(
        "--cheat", type=_cheat, default=None, metavar="KIND:SCALE",
        help="devnets and demos only: misbehave on purpose to be caught. perturb:1e-3 (relative noise on this "
        "stage's weights; its proofs stay consistent, only the validator's replay catches it), or a handoff lie: "
        "quiet:0.9 (alter what the proof does not bind), equivocate:0.01 (hand over proofs other than the "
        "receipt's), false-complaint (complain about honest rows); docs/handoff.md",
    )
    run.add_argument("--grace", type=float, default=30.0, help="seconds in-flight sequences get at shutdown (default 30)")
    run.add_argument("--validator-wait", type=float, default=float(os.environ.get("STAGEWISE_VALIDATOR_WAIT") or 600),
                     help="seconds a starting worker waits for an unreachable validator, retrying with backoff "
                     "(env STAGEWISE_VALIDATOR_WAIT, default 600)")
    add_http_limit_options(run)
    run.set_defaults(func=cmd_run)


def parse_size(text: str) -> int:
    """'8GiB', '512M', '1.5g', '1073741824' -> bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 8GiB or 512MiB")
    number, unit = float(match.group(1)), (match.group(2) or "b").lower()
    power = {"b": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit[0]]
    size = int(number * 1024**power)
    if size <= 0:
        raise argparse.ArgumentTypeError("capacity must be positive")
    return size


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from node import wallet
    from node.cli.main import CommandError
    from node.worker.config import WorkerConfig
    from node.worker.errors import WorkerError
    from node.worker.run import run_worker

    if not args.validator:
        raise CommandError(f"no validator: pass --validator URL or set {VALIDATOR_ENV}")
    model_dirs = list(args.model_dir)
    if args.model == "smollm2":
        from node.pipeline.smollm2 import smollm2_dir

        model_dirs.append(smollm2_dir())
    if not model_dirs:
        raise CommandError("no model: pass --model-dir DIR (repeatable) or --model smollm2")
    keystore = args.keystore or wallet.default_keystore_path()
    try:
        key = wallet.unlock(keystore, args.password_file)
    except wallet.WalletError as error:
        raise CommandError(str(error)) from None
    config = WorkerConfig(
        keystore=keystore,
        validator_url=args.validator,
        password_file=args.password_file,
        rpc_url=args.rpc_url,
        contract=args.contract,
        min_stake_wei=args.min_stake,
        host=args.host,
        port=args.port,
        public_url=args.public_url,
        memory_bytes=args.capacity,
        layer_tokens_per_s=args.throughput,
        region=args.region,
        model_dirs=tuple(model_dirs),
        device=args.device,
        heartbeat_s=args.heartbeat,
        grace_s=args.grace,
        cheat=args.cheat,
        http_limits=limits_from_args(args),
        validator_wait_s=args.validator_wait,
    )
    try:
        asyncio.run(run_worker(config, key))
    except WorkerError as error:
        raise CommandError(str(error)) from None
    return 0


def _cheat(text: str):
    from node.worker.cheats import Cheat, CheatError

    try:
        return Cheat.parse(text)
    except CheatError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
