"""`stagewise validator run`, `validator evidence` and `verify-evidence` after parsing.

The command line (node/cli/validator.py) parses the flags, every one of which also reads an environment
variable (node/settings.py), and hands them over to `run_validator`, `export_evidence` or
`verify_evidence`. Orchestration (worker registration, groups, dispatch: node/orchestration/setup.py)
routes to the same process and app.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path

from ledger import json_input
from ledger.chain.client import ChainClient
from ledger.chain.embedded import ChainServer
from ledger.chain.errors import ChainError, NoStakingContract
from ledger.db import LedgerError
from ledger.store import Ledger
from node import settings
from node.errors import FIND_THE_STAKING_CONTRACT, CommandError
from node.http.limits import HttpGuard, limits_from_args
from node.orchestration.setup import build_orchestrations
from node.orchestration.setup import orchestrations_registrar
from node.pipeline.smollm2 import smollm2_dir
from node.protocol.receipts import ReceiptDomain
from node.protocol.signing import SigningKey
from node.validator.app import build_app
from node.validator.config import ValidatorConfig
from node.validator.evidence import EVIDENCE_MAX_BYTES, Evidence, EvidenceError, check_evidence, needs_model
from node.validator.issued_jobs import awaited_by_ledger
from node.validator.replay_models import ReplayModels
from node.validator.service import ValidatorNode, evidence_document
from node.validator.spot_check import GuessableSecret, sample_secret
from node.validator.verdict import Tariff
from node.wallet import WalletError, parse_private_key, unlock

log = logging.getLogger("stagewise.validator")


def _model_dirs(args) -> list[Path]:
    """--model-dir (or STAGEWISE_MODEL_DIRS), and the bundled --model."""
    dirs = [Path(p) for p in args.model_dir or []]
    if getattr(args, "model", None) == "smollm2":
        dirs.append(smollm2_dir())
    return dirs


def replay_threads(requested: int, cpu_count: int | None) -> int:
    """Torch threads for replays: as requested, else half the cores, so that intake and the API keep the
    rest while a replay runs (a replay is one large prefill and takes every thread it is given)."""
    return requested if requested > 0 else max(1, (cpu_count or 2) // 2)


def run_validator(args) -> int:
    """Run the validator `args` (the parsed flags of `stagewise validator run`) describes until SIGTERM."""
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
        known = settings.remembered_chain()  # what `stagewise chain deploy` remembered, for this same node only
        if known.get("rpc_url") != args.rpc_url or not known.get("contract"):
            raise CommandError(f"--rpc-url needs --contract (the staking contract's address; else the one "
                               f"`stagewise chain deploy` remembered in {settings.chain_file()} for this --rpc-url)")
        args.contract = known["contract"]
        log.info("staking contract %s, remembered in %s", args.contract, settings.chain_file())
    if args.no_chain and not (args.chain_id and args.contract):
        raise CommandError("--no-chain needs --chain-id and --contract for the receipts' EIP-712 domain")
    if args.embedded_chain and not getattr(args, "allow_private_stage_urls", False):
        # The embedded chain's RPC listens on loopback only, so its workers (who must stake there) are on this host.
        args.allow_private_stage_urls = True
        log.info("--embedded-chain: workers on this host are accepted (loopback stage URLs allowed)")
    try:
        asyncio.run(_serve(args, dirs))
    except KeyboardInterrupt:
        pass
    return 0


def _check_device(device: str, precision: str) -> None:
    """The replay device exists and computes the declared precision (PROTOCOL I8), or a one-line error."""
    from node.pipeline.devices import DeviceError, supported_precisions  # torch: kept out of start-up

    try:
        computes = supported_precisions(device)
    except DeviceError as error:
        raise CommandError(f"{error}; pass --device cpu or a device torch lists") from None
    if precision not in computes:
        raise CommandError(f"--precision {precision}: --device {device} computes {', '.join(computes)} only; "
                           "declare one of those or replay on another device")


async def _serve(args, dirs: list[Path]) -> None:
    import torch
    from aiohttp import web

    torch.set_num_threads(replay_threads(args.replay_threads, os.cpu_count()))
    log.info("replays use %d torch thread(s) (--replay-threads)", torch.get_num_threads())
    _check_device(args.replay_device, args.precision)
    chain = key = rpc_url = None
    chain_server = None
    if args.embedded_chain:
        if args.keystore or settings.VALIDATOR_KEY.get():
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
        chain = await asyncio.to_thread(_connect, args.rpc_url, args.contract)
        key = _validator_key(args)
        rpc_url = args.rpc_url
        domain = ReceiptDomain(await asyncio.to_thread(lambda: chain.chain_id), chain.address)
    else:
        domain = ReceiptDomain(args.chain_id, args.contract)
        if args.keystore or settings.VALIDATOR_KEY.get():
            key = _validator_key(args)
        elif not args.no_orchestration:
            # Stage servers obey only requests signed by the address GET /health names: without a chain there
            # is nothing to slash or anchor, so a throwaway key can sign them (workers re-read /health).
            key = SigningKey.generate()
            log.warning("no validator key (--keystore): stage control requests are signed by the throwaway key %s", key.address)

    ledger = await Ledger.open(settings.database_url())
    models = ReplayModels(dirs, precision=args.precision, device=args.replay_device)
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
        node.spec_guard = awaited_by_ledger(ledger)
    elif args.no_orchestration:
        log.warning("--accept-unissued-jobs: bundles of any job are taken, seeds chosen by workers included")
    orchestrations = []
    if args.cosign_only and not args.no_orchestration:
        raise CommandError("--cosign-only runs no orchestrator: add --no-orchestration")
    if not args.no_orchestration:
        orchestrations = build_orchestrations(args, node, dirs)  # one per model: groups form per model
    guard = HttpGuard(limits_from_args(args), on_refused=_count_refused_bundle(node))
    app = build_app(node, [orchestrations_registrar(orchestrations)] if orchestrations else [], guard=guard)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    guard(runner)
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else args.port
    if node.config.public_url is None:
        node.config = dataclasses.replace(node.config, public_url=f"http://{args.host}:{port}")
    print(json.dumps({"event": "listening", "url": f"http://{args.host}:{port}", "validator_id": config.validator_id,
                      "chain_id": domain.chain_id, "contract": domain.verifying_contract, "rpc_url": rpc_url,
                      "models": sorted(models.ids)}), flush=True)
    log.info("validator %s listening on http://%s:%d (models %s)", config.validator_id, args.host, port, ", ".join(sorted(models.ids)))
    node.start(validators=args.validation_workers)
    for orchestration in orchestrations:
        await orchestration.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        for orchestration in orchestrations:
            await orchestration.stop()
        await node.stop()
        await runner.cleanup()
        if chain_server is not None:
            await chain_server.stop()
        await ledger.close()


def _connect(rpc_url: str, contract: str) -> ChainClient:
    """The node at --rpc-url and the staking contract at --contract on it (blocking); what goes wrong is one
    CommandError that says what to do."""
    try:
        return ChainClient.connect(rpc_url, address=contract)
    except NoStakingContract as error:
        raise CommandError(f"{error}; {FIND_THE_STAKING_CONTRACT}") from None
    except ChainError as error:
        raise CommandError(f"the chain at {rpc_url}: {error}; check --rpc-url") from None
    except OSError as error:  # requests' connection errors and timeouts are OSErrors
        found = re.search(r"\[Errno -?\d+\] ([^\"')]+)", str(error))
        reason = found.group(1).strip() if found else type(error).__name__
        raise CommandError(f"cannot reach the chain at {rpc_url} ({reason}); check --rpc-url: is its node running, "
                           "and is that its JSON-RPC URL?") from None
    except ValueError as error:
        raise CommandError(f"--contract {contract}: {error}; it takes the staking contract's 0x address") from None


def _validator_key(args):

    if settings.VALIDATOR_KEY.get():
        return parse_private_key(settings.VALIDATOR_KEY.get())
    if not args.keystore:
        raise CommandError("the validator needs its key to slash and anchor: --keystore FILE (or STAGEWISE_VALIDATOR_KEY)")
    try:
        return unlock(args.keystore, args.password_file)
    except WalletError as error:
        raise CommandError(str(error)) from None


def export_evidence(args) -> int:
    """Print or write the evidence of the verdict on `args.job_id` from the ledger."""
    async def fetch():
        async with await Ledger.open(settings.database_url(), must_exist=True) as ledger:
            return await evidence_document(ledger, args.job_id)


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
    return settings.ADMIN_TOKEN.get() or None


def verify_evidence(args) -> int:
    """Recompute the verdict of the evidence file `args.file`: 0 when it matches the stored one, else 1."""
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


def _config(args, dirs: list[Path], secret: bytes) -> ValidatorConfig:
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
        # port 0 (any free one) is not a name two processes on one host can tell apart: the process id is
        validator_id=args.validator_id or f"{os.uname().nodename}:{args.port or f'pid{os.getpid()}'}",
        peers=tuple(url.rstrip("/") for url in args.peers),
        public_url=args.public_url.rstrip("/") if args.public_url else None,
        audit_rate=args.audit_rate,
        proposer_grace_seconds=args.proposer_grace,
        cosign_only=args.cosign_only,
    )


def _count_refused_bundle(node):
    """The HTTP guard's refusals of POST /v1/bundles (rate, slow or oversized body) count in the bundle metrics."""

    def count(request, code: str) -> None:
        if request.path == "/v1/bundles":
            node.metrics.bundles_refused.labels(code).inc()

    return count
