"""`stagewise validator …` and `stagewise verify-evidence`.

    stagewise validator run --model-dir DIR [--embedded-chain | --rpc-url URL --contract ADDR] [--db URL]
    stagewise validator evidence JOB_ID [-o FILE]      # from the ledger (--db)
    stagewise verify-evidence FILE --model-dir DIR     # recompute a verdict from its evidence alone (I5)

Every flag of `validator run` also reads an environment variable (shown in --help), so a container is
configured by its environment. Orchestration (worker registration, groups, dispatch:
node/orchestration/setup.py) adds its flags and routes to the same process and app.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from node import settings
from node.http.limits import HttpGuard, add_http_limit_options, limits_from_args

if TYPE_CHECKING:  # the module itself imports torch-free config lazily, like every command here
    from node.validator.config import ValidatorConfig

log = logging.getLogger("stagewise.validator")

ORCHESTRATION_MODULE = "node.orchestration.setup"


def _env(name: str, default=None):
    return os.environ.get(name, default)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else default


def register(subparsers: argparse._SubParsersAction) -> None:
    validator = subparsers.add_parser(
        "validator", help="run a validator node, export evidence", description="The validator node."
    )
    commands = validator.add_subparsers(title="validator commands", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="serve the validator API and validate bundles",
        description="Serve the validator API, validate queued bundles (replay + verdict), write rewards and "
        "slashes to the ledger, close epochs and send slashes and anchors to the chain.",
    )
    run.add_argument("--model-dir", type=Path, action="append", default=None,
                     help="a model directory this validator replays (repeatable; env STAGEWISE_MODEL_DIRS, ':'-separated)")
    run.add_argument("--model", choices=["smollm2"], default=_env("STAGEWISE_MODEL"),
                     help="a bundled model to replay: smollm2 = SmolLM2-135M-Instruct (env STAGEWISE_MODEL)")
    chain = run.add_argument_group("chain")
    chain.add_argument("--embedded-chain", action="store_true", default=_env("STAGEWISE_EMBEDDED_CHAIN") == "1",
                       help="start an in-process EVM, deploy the contract and serve it on loopback (env STAGEWISE_EMBEDDED_CHAIN=1)")
    chain.add_argument("--rpc-url", default=_env("STAGEWISE_RPC_URL"), help="chain JSON-RPC URL (env STAGEWISE_RPC_URL)")
    chain.add_argument("--contract", default=_env("STAGEWISE_CONTRACT"), help="staking contract address (env STAGEWISE_CONTRACT)")
    chain.add_argument("--no-chain", action="store_true", default=_env("STAGEWISE_NO_CHAIN") == "1",
                       help="run without a chain: stakes come from the ledger only, nothing is sent (needs --chain-id and --contract for receipts)")
    chain.add_argument("--chain-id", type=int, default=_env_int("STAGEWISE_CHAIN_ID", 0) or None,
                       help="chain id of the receipts' EIP-712 domain with --no-chain (env STAGEWISE_CHAIN_ID)")
    chain.add_argument("--keystore", type=Path, default=_env("STAGEWISE_VALIDATOR_KEYSTORE"),
                       help="the validator's keystore v3 file, for slashes and anchors; with --embedded-chain its key owns the "
                            "fresh contract (default there: the chain's first dev key) (env STAGEWISE_VALIDATOR_KEYSTORE)")
    chain.add_argument("--password-file", type=Path, help="keystore password file (else $STAGEWISE_KEYSTORE_PASSWORD)")
    run.add_argument("--host", default=_env("STAGEWISE_HOST", "127.0.0.1"), help="listen address (env STAGEWISE_HOST, default 127.0.0.1)")
    run.add_argument("--port", type=int, default=_env_int("STAGEWISE_PORT", 8700), help="listen port, 0 = any free one (env STAGEWISE_PORT, default 8700)")
    run.add_argument("--sample-rate", type=float, default=_env_float("STAGEWISE_SAMPLE_RATE", 1.0),
                     help="fraction of jobs replayed, the rest accepted unreplayed; see docs/validator.md (env STAGEWISE_SAMPLE_RATE, default 1)")
    run.add_argument("--sample-secret", default=_env("STAGEWISE_SAMPLE_SECRET", ""),
                     help="secret that makes the replayed jobs unpredictable to workers, at least 16 bytes (env "
                     "STAGEWISE_SAMPLE_SECRET; default: 32 random bytes made on first start and kept in the ledger, so "
                     "validators sharing it draw the same jobs)")
    run.add_argument("--epoch-seconds", type=float, default=_env_float("STAGEWISE_EPOCH_SECONDS", 60.0),
                     help="close an epoch at least this often (env STAGEWISE_EPOCH_SECONDS, default 60)")
    run.add_argument("--epoch-entries", type=int, default=_env_int("STAGEWISE_EPOCH_ENTRIES", 1000),
                     help="close an epoch once this many entries wait (env STAGEWISE_EPOCH_ENTRIES, default 1000)")
    run.add_argument("--admin-token-file", type=Path, default=_env("STAGEWISE_ADMIN_TOKEN_FILE"),
                     help="file holding the bearer token for admin actions (env STAGEWISE_ADMIN_TOKEN_FILE, or the "
                     "token itself in STAGEWISE_ADMIN_TOKEN); none = admin disabled")
    run.add_argument("--admin-token", help="the token itself: avoid, every user of the machine sees it in `ps` "
                     "(a warning says so); use the file or the environment variable")
    run.add_argument("--validator-id", default=_env("STAGEWISE_VALIDATOR_ID"),
                     help="name of this process's queue claims; keep it across restarts to reclaim at once (env STAGEWISE_VALIDATOR_ID, default host:port)")
    run.add_argument("--lease-seconds", type=float, default=_env_float("STAGEWISE_LEASE_SECONDS", 120.0),
                     help="a claimed job unfinished after this long is taken again (env STAGEWISE_LEASE_SECONDS, default 120)")
    run.add_argument("--wei-per-work-unit", type=int, default=_env_int("STAGEWISE_WEI_PER_WORK_UNIT", 10**9),
                     help="reward per layer x token (env STAGEWISE_WEI_PER_WORK_UNIT, default 1 gwei)")
    run.add_argument("--slash-wei", type=int, default=_env_int("STAGEWISE_SLASH_WEI", 10**16),
                     help="stake taken from a blamed worker (env STAGEWISE_SLASH_WEI, default 0.01 ether)")
    run.add_argument("--min-stake-wei", type=int, default=_env_int("STAGEWISE_MIN_STAKE_WEI", None),
                     help="stake a worker needs to register, to be issued a job and to sign a receipt; at least "
                     "--slash-wei (env STAGEWISE_MIN_STAKE_WEI, default 3 slashes: 0.03 ether; docs/validator.md)")
    run.add_argument("--bundle-deadline", type=float, default=_env_float("STAGEWISE_BUNDLE_DEADLINE", 600.0),
                     help="an issued job whose complete bundle has not arrived after this many seconds is "
                     "soft-invalidated: nobody paid, nobody slashed (env STAGEWISE_BUNDLE_DEADLINE, default 600)")
    add_http_limit_options(run)
    run.add_argument("--max-body-bytes", type=int, default=_env_int("STAGEWISE_MAX_BODY_BYTES", 8 * 1024 * 1024),
                     help="largest request body accepted; larger gets 413 (env STAGEWISE_MAX_BODY_BYTES, default 8 MiB)")
    run.add_argument("--validation-workers", type=int, default=_env_int("STAGEWISE_VALIDATION_WORKERS", 1),
                     help="concurrent validations in this process (env STAGEWISE_VALIDATION_WORKERS, default 1)")
    run.add_argument("--replay-threads", type=int, default=_env_int("STAGEWISE_REPLAY_THREADS", 0),
                     help="torch threads for replays (env STAGEWISE_REPLAY_THREADS; default half the cores, which leaves "
                     "the rest to bundle intake and the API; a machine that only validates may give it every core)")
    run.add_argument("--no-orchestration", action="store_true", default=_env("STAGEWISE_NO_ORCHESTRATION") == "1",
                     help="validate only: no worker registration, groups or dispatch; bundles are taken for the jobs "
                     "an orchestrator on the shared ledger issued (a second validator; env STAGEWISE_NO_ORCHESTRATION=1)")
    run.add_argument("--accept-unissued-jobs", action="store_true", default=_env("STAGEWISE_ACCEPT_UNISSUED_JOBS") == "1",
                     help="with --no-orchestration: take bundles of any job, not only those an orchestrator on the "
                     "shared ledger issued and awaits (a validator tested on its own; in production workers could "
                     "then pick their own seeds, against I1; env STAGEWISE_ACCEPT_UNISSUED_JOBS=1)")
    setup = _orchestration_setup()
    if setup is not None:
        setup.add_orchestration_options(run)
    run.set_defaults(func=_run)

    evidence = commands.add_parser("evidence", help="export the evidence of a job's verdict as JSON",
                                   description="Print (or write) the evidence of a job's verdict from the ledger (--db).")
    evidence.add_argument("job_id", help="0x-prefixed job id")
    evidence.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    evidence.set_defaults(func=_evidence)

    verify = subparsers.add_parser(
        "verify-evidence",
        help="recompute a verdict from its evidence file (I5)",
        description="Judge the evidence's bundle again and check that the stored verdict is the one the evidence "
        "implies: a handoff complaint by its evidence alone (no model needed), anything else by replaying the model. "
        "Exit 0 when it is, 1 when it is not.",
    )
    verify.add_argument("file", type=Path, help="evidence JSON (GET /v1/jobs/{id}/evidence or `stagewise validator evidence`)")
    verify.add_argument("--model-dir", type=Path, action="append", help="the model (its manifest must hash to the evidence's model id)")
    verify.add_argument("--model", choices=["smollm2"], help="a bundled model instead of --model-dir")
    verify.set_defaults(func=_verify_evidence)


def _orchestration_setup():
    """node.orchestration.setup when it is installed (it is part of the same package)."""
    try:
        return importlib.import_module(ORCHESTRATION_MODULE)
    except ModuleNotFoundError as error:
        if error.name != ORCHESTRATION_MODULE:
            raise
        return None


def _model_dirs(args) -> list[Path]:
    dirs = list(args.model_dir or [])
    if not dirs and _env("STAGEWISE_MODEL_DIRS"):
        dirs = [Path(p) for p in _env("STAGEWISE_MODEL_DIRS").split(":") if p]
    if getattr(args, "model", None) == "smollm2":
        from node.pipeline.smollm2 import smollm2_dir

        dirs.append(smollm2_dir())
    return dirs


def replay_threads(requested: int, cpu_count: int | None) -> int:
    """Torch threads for replays: as requested, else half the cores, so that intake and the API keep the
    rest while a replay runs (a replay is one large prefill and takes every thread it is given)."""
    return requested if requested > 0 else max(1, (cpu_count or 2) // 2)


def _run(args) -> int:
    from node.cli.main import CommandError

    dirs = _model_dirs(args)
    if not dirs:
        raise CommandError("no model to replay: pass --model-dir DIR or --model smollm2")
    for path in dirs:
        if not (Path(path) / "config.json").is_file():
            raise CommandError(f"{path} is not a model directory (no config.json)")
    modes = sum([bool(args.embedded_chain), bool(args.rpc_url), bool(args.no_chain)])
    if modes != 1:
        raise CommandError("choose one chain: --embedded-chain, --rpc-url URL --contract ADDR, or --no-chain")
    if args.rpc_url and not args.contract:
        raise CommandError("--rpc-url needs --contract (the staking contract's address)")
    if args.no_chain and not (args.chain_id and args.contract):
        raise CommandError("--no-chain needs --chain-id and --contract for the receipts' EIP-712 domain")
    try:
        asyncio.run(_serve(args, dirs))
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(args, dirs: list[Path]) -> None:
    from aiohttp import web

    from ledger.store import Ledger
    from node.protocol.receipts import ReceiptDomain
    from node.validator.app import build_app
    from node.validator.replay_models import ReplayModels
    from node.cli.main import CommandError
    from node.validator.service import ValidatorNode
    from node.protocol.signing import SigningKey
    from node.validator.spot_check import GuessableSecret, sample_secret

    import torch

    torch.set_num_threads(replay_threads(args.replay_threads, os.cpu_count()))
    log.info("replays use %d torch thread(s) (--replay-threads)", torch.get_num_threads())
    chain = key = rpc_url = None
    chain_server = None
    if args.embedded_chain:
        from ledger.chain.client import ChainClient
        from ledger.chain.embedded import ChainServer

        if args.keystore or os.environ.get("STAGEWISE_VALIDATOR_KEY"):
            key = _validator_key(args)  # owns the fresh contract and is its validator
        else:
            key = SigningKey.generate()
            log.warning("no --keystore: the embedded chain's contract is owned by a throwaway key %s, gone when "
                        "this process stops", key.address)
        chain = await asyncio.to_thread(lambda: ChainClient.served_dev_chain(key))
        chain_server = ChainServer(chain.w3, host="127.0.0.1", port=0)
        rpc_url = await chain_server.start()
        log.info("embedded chain %d served at %s, staking contract %s", chain.chain_id, rpc_url, chain.address)
        domain = ReceiptDomain(chain.chain_id, chain.address)
    elif args.rpc_url:
        from ledger.chain.client import ChainClient

        chain = await asyncio.to_thread(ChainClient.connect, args.rpc_url, address=args.contract)
        key = _validator_key(args)
        rpc_url = args.rpc_url
        domain = ReceiptDomain(await asyncio.to_thread(lambda: chain.chain_id), chain.address)
    else:
        domain = ReceiptDomain(args.chain_id, args.contract)
        if args.keystore or os.environ.get("STAGEWISE_VALIDATOR_KEY"):
            key = _validator_key(args)
        elif not args.no_orchestration:
            # Stage servers obey only requests signed by the address GET /health names: without a chain there
            # is nothing to slash or anchor, so a throwaway key can sign them (workers re-read /health).
            key = SigningKey.generate()
            log.warning("no validator key (--keystore): stage control requests are signed by the throwaway key %s", key.address)

    ledger = await Ledger.open(settings.database_url())
    models = ReplayModels(dirs)
    try:
        secret = await sample_secret(ledger, args.sample_secret.encode(), args.sample_rate)
    except GuessableSecret as error:
        raise CommandError(f"--sample-secret: {error}") from None
    try:
        config = _config(args, dirs, secret)
    except ValueError as error:
        raise CommandError(str(error)) from None
    node = ValidatorNode(config, ledger, domain=domain, models=models, chain=chain, chain_key=key, rpc_url=rpc_url)
    if args.no_orchestration and not args.accept_unissued_jobs:
        from node.validator.issued_jobs import awaited_by_ledger

        node.spec_guard = awaited_by_ledger(ledger)
    elif args.no_orchestration:
        log.warning("--accept-unissued-jobs: bundles of any job are taken, seeds chosen by workers included")
    setup = None if args.no_orchestration else _orchestration_setup()
    orchestration = setup.build_orchestration(args, node, dirs[0]) if setup is not None else None
    guard = HttpGuard(limits_from_args(args), on_refused=_count_refused_bundle(node))
    app = build_app(node, [orchestration.registrar] if orchestration is not None else [], guard=guard)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    guard(runner)
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else args.port
    print(json.dumps({"event": "listening", "url": f"http://{args.host}:{port}", "validator_id": config.validator_id,
                      "chain_id": domain.chain_id, "contract": domain.verifying_contract, "rpc_url": rpc_url,
                      "models": sorted(models.ids)}), flush=True)
    log.info("validator %s listening on http://%s:%d (models %s)", config.validator_id, args.host, port, ", ".join(sorted(models.ids)))
    node.start(validators=args.validation_workers)
    if orchestration is not None:
        await orchestration.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        if orchestration is not None:
            await orchestration.stop()
        await node.stop()
        await runner.cleanup()
        if chain_server is not None:
            await chain_server.stop()
        await ledger.close()


def _validator_key(args):
    from node.cli.main import CommandError

    if os.environ.get("STAGEWISE_VALIDATOR_KEY"):
        from node.wallet import parse_private_key

        return parse_private_key(os.environ["STAGEWISE_VALIDATOR_KEY"])
    if not args.keystore:
        raise CommandError("the validator needs its key to slash and anchor: --keystore FILE (or STAGEWISE_VALIDATOR_KEY)")
    from node.wallet import unlock

    return unlock(args.keystore, args.password_file)


def _evidence(args) -> int:
    from node.cli.main import CommandError

    async def fetch():
        from ledger.store import Ledger
        from node.validator.service import evidence_document

        async with await Ledger.open(settings.database_url(), must_exist=True) as ledger:
            return await evidence_document(ledger, args.job_id)

    from ledger.db import LedgerError

    try:
        document = asyncio.run(fetch())
    except LedgerError as error:
        raise CommandError(str(error)) from None
    if document is None:
        raise CommandError(f"job {args.job_id} is unknown to this ledger or has no verdict yet")
    text = json.dumps(document, indent=1, sort_keys=True)
    if args.output:
        args.output.write_text(text + "\n")
        print(f"wrote evidence of {args.job_id} to {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0


def admin_token(args) -> str | None:
    """The admin token: from --admin-token-file, STAGEWISE_ADMIN_TOKEN, or (warned about) --admin-token."""
    from node.cli.main import CommandError

    if args.admin_token:
        log.warning("--admin-token puts the token on the command line, where `ps` shows it to every user of this "
                    "machine: use --admin-token-file or STAGEWISE_ADMIN_TOKEN")
        return args.admin_token
    if args.admin_token_file:
        try:
            token = Path(args.admin_token_file).read_text().strip()
        except OSError as error:
            raise CommandError(f"cannot read the admin token file {args.admin_token_file}: {error.strerror}") from None
        if not token:
            raise CommandError(f"the admin token file {args.admin_token_file} is empty")
        return token
    return os.environ.get("STAGEWISE_ADMIN_TOKEN") or None


def _verify_evidence(args) -> int:
    from ledger import json_input
    from node.cli.main import CommandError
    from node.validator.evidence import EVIDENCE_MAX_BYTES, Evidence, EvidenceError, check_evidence, needs_model

    try:
        evidence = Evidence.from_dict(json_input.loads(args.file.read_bytes(), max_bytes=EVIDENCE_MAX_BYTES))
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot read evidence {args.file}: {error}") from None
    dirs = _model_dirs(args)
    if not dirs and needs_model(evidence):
        raise CommandError("pass --model-dir DIR (or --model smollm2): the verdict is recomputed by replaying the model")
    try:
        check = check_evidence(evidence, str(dirs[0]) if dirs else None)
    except EvidenceError as error:
        raise CommandError(str(error)) from None
    print(f"job {evidence.job_id}: {check.explain()} (replay {check.replay_seconds:.2f} s)")
    if not evidence.replayed and check.matches:
        print("note: this job was accepted without replay (--sample-rate); the replay above confirms it")
    return 0 if check.matches else 1


def _config(args: argparse.Namespace, dirs: list[Path], secret: bytes) -> ValidatorConfig:
    from node.validator.config import ValidatorConfig
    from node.validator.verdict import Tariff

    return ValidatorConfig(
        model_dirs=tuple(dirs),
        sample_rate=args.sample_rate,
        sample_secret=secret,
        epoch_seconds=args.epoch_seconds,
        epoch_entries=args.epoch_entries,
        admin_token=admin_token(args),
        max_body_bytes=args.max_body_bytes,
        tariff=Tariff(args.wei_per_work_unit, args.slash_wei),
        min_stake_wei=args.min_stake_wei,
        claim_lease_seconds=args.lease_seconds,
        bundle_deadline_seconds=args.bundle_deadline,
        validator_id=args.validator_id or f"{os.uname().nodename}:{args.port}",
    )


def _count_refused_bundle(node):
    """The HTTP guard's refusals of POST /v1/bundles (rate, slow or oversized body) count in the bundle metrics."""

    def count(request, code: str) -> None:
        if request.path == "/v1/bundles":
            node.metrics.bundles_refused.labels(code).inc()

    return count
