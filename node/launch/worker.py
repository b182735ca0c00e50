"""`stagewise worker run` after parsing: find the models, unlock the key, build the config and run.

The command line (node/cli/worker.py) parses the flags and hands them over to `start_worker`.
"""

from __future__ import annotations

from typing import Any

from node import settings, wallet
from node.errors import CommandError
from node.http.limits import limits_from_args
from node.pipeline.smollm2 import smollm2_dir
from node.worker.config import WorkerConfig
from node.worker.errors import WorkerError
from node.worker.run import run_worker


def start_worker(args: Any) -> int:
    """Run the worker `args` (the parsed flags of `stagewise worker run`) describes until it stops."""
    import asyncio


    if not args.validator:
        raise CommandError(f"no validator: pass --validator URL or set {settings.VALIDATOR_URL.name}")
    model_dirs = list(args.model_dir)
    if args.model == "smollm2":
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
        precisions=tuple(args.precisions) or None,
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
