"""`stagewise validator …` and `stagewise verify-evidence`.

    stagewise validator run --model-dir DIR [--embedded-chain | --rpc-url URL --contract ADDR] [--db URL]
    stagewise validator evidence JOB_ID [-o FILE]      # from the ledger (--db)
    stagewise verify-evidence FILE --model-dir DIR     # recompute a verdict from its evidence alone (I5)

Every flag of `validator run` also reads an environment variable (shown in --help; node/settings.py), so a
container is configured by its environment. The work is done in node/launch/validator.py, which imports
torch, aiohttp and the ledger when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import click

from node import settings
from node.cli.options import (
    CONTEXT_SETTINGS,
    PATH,
    PathList,
    arguments,
    env_option,
    help_group,
    http_limit_options,
)
from node.orchestration.grouping import PREFERRED_STAGES

MODEL_DIRS = PathList(path_type=str)


def orchestration_options(function: Callable) -> Callable:
    """The flags of `validator run` that wire orchestration (node/orchestration/setup.py): workers, groups
    and tasks."""
    options = [
        env_option("--tasks", variable=settings.TASKS,
                   help="JSONL task file, 'arithmetic' for the bundled set, or a generator gen:NAME:n=N:seed=S "
                   "(NAME: arithmetic, linear, modular, word); without it no jobs are dispatched"),
        click.option("--samples-per-task", type=click.IntRange(1, 1024), default=1,
                     help="run each task this many times, each with its own seed: the samples of its pass@k"),
        click.option("--stages-per-group", type=int, help="exactly this many stages per group, more only when memory "
                     "needs them", show_default="at least --preferred-stages"),
        click.option("--preferred-stages", type=int, default=PREFERRED_STAGES,
                     help="without --stages-per-group: at least this many stages per group while that many workers "
                     "are free (fewer otherwise, so one or two workers still form a group), more when memory needs them"),
        click.option("--short-group-wait", type=float, default=30.0,
                     help="seconds free workers wait for others before forming a group of fewer than "
                     "--preferred-stages stages (workers are started one after another; a formed group keeps its "
                     "shape), 0 = form at once"),
        click.option("--max-stages", type=int, default=16, help="longest group allowed"),
        click.option("--sequences-per-group", type=int, help="sequences kept in flight on each group",
                     show_default="two per stage"),
        click.option("--wait-for-groups", type=int, default=1,
                     help="groups that must have formed before the first task is dispatched"),
        click.option("--max-new-tokens", type=int, default=32, help="token budget per task unless the task says"),
        click.option("--temperature", type=float, default=0.0, help="sampling temperature, 0 = greedy"),
        click.option("--top-p", type=float, default=1.0, help="nucleus sampling mass, 1 = off"),
        click.option("--top-k", type=int, default=0, help="top-k sampling, 0 = off"),
        click.option("--heartbeat-timeout", type=float, default=30.0,
                     help="seconds without a heartbeat before a worker is dropped"),
        click.option("--regroup-interval", type=float, default=2.0, help="seconds between regrouping rounds"),
        click.option("--orchestrator-lease", type=float, default=15.0,
                     help="seconds the orchestrator lease in the ledger lasts unrenewed: of the validator processes "
                     "sharing a ledger one orchestrates, and another takes over this long after it dies"),
        env_option("--allow-private-stage-urls", variable=settings.ALLOW_PRIVATE_STAGE_URLS,
                   help="accept workers whose stage URL is a loopback, private or link-local address: for devnets "
                   "and networks of your own; refused by default, since the validator sends signed requests to "
                   "those URLs"),
        env_option("--defence-seconds", variable=settings.DEFENCE_SECONDS,
                   help="how long a verdict that blames a receiving stage on its proofs waits for that stage's "
                   "defence, the rows it received signed by its predecessor"),
        click.option("--seed-secret-file", type=PATH,
                     help=f"file with the secret job seeds are derived from (else env {settings.SEED_SECRET.name} "
                     "as hex, else a fresh random one)"),
        click.option("--results", type=PATH,
                     help="append every finished task (output, correct, job ids) to this JSONL file"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def parse_orchestration_flags(argv: list[str]) -> SimpleNamespace:
    """Only the orchestration flags of `validator run`, parsed as it parses them: what
    node.orchestration.setup.build_orchestration takes, for a validator built in-process (tests)."""

    @click.command("orchestration", context_settings=CONTEXT_SETTINGS)
    @orchestration_options
    def command(**values: object) -> SimpleNamespace:
        return SimpleNamespace(**values)

    return command.main(list(argv), standalone_mode=False)


@help_group("validator", short_help="run a validator node, export evidence")
def validator_group() -> None:
    """The validator node: validate bundles, keep the ledger, slash and anchor on chain."""


@validator_group.command("run", context_settings=CONTEXT_SETTINGS, short_help="serve the validator API and validate bundles")
@env_option("--model-dir", variable=settings.MODEL_DIRS, type=MODEL_DIRS, multiple=True, default=None,
            help="a model directory this validator replays (repeatable; in the env ':'-separated)")
@env_option("--model", variable=settings.MODEL, type=click.Choice(["smollm2"]))
@env_option("--embedded-chain", variable=settings.EMBEDDED_CHAIN,
            help="chain: start an in-process EVM, deploy the contract and serve it on loopback")
@env_option("--rpc-url", variable=settings.RPC_URL, help="chain: JSON-RPC URL")
@env_option("--contract", variable=settings.CONTRACT, help="chain: staking contract address",
            show_default="with --rpc-url: the one `chain deploy` remembered for that URL in <data dir>/chain.json")
@env_option("--no-chain", variable=settings.NO_CHAIN,
            help="chain: none; stakes come from the ledger only, nothing is sent (needs --chain-id and --contract "
            "for receipts)")
@env_option("--chain-id", variable=settings.CHAIN_ID, help="chain id of the receipts' EIP-712 domain with --no-chain")
@env_option("--keystore", variable=settings.VALIDATOR_KEYSTORE,
            help="the validator's keystore v3 file, for slashes and anchors; with --embedded-chain its key owns the "
            f"fresh contract (default there: the chain's first dev key; or the key itself in "
            f"{settings.VALIDATOR_KEY.name})")
@click.option("--password-file", type=PATH, help=f"keystore password file (else ${settings.KEYSTORE_PASSWORD.name})")
@env_option("--host", variable=settings.HOST)
@env_option("--port", variable=settings.PORT)
@env_option("--sample-rate", variable=settings.SAMPLE_RATE)
@env_option("--sample-secret", variable=settings.SAMPLE_SECRET, show_default=False,
            help="secret that makes the replayed jobs unpredictable to workers, at least 16 bytes (default: 32 "
            "random bytes made on first start and kept in the ledger, so validators sharing it draw the same jobs)")
@env_option("--epoch-seconds", variable=settings.EPOCH_SECONDS)
@env_option("--epoch-entries", variable=settings.EPOCH_ENTRIES)
@env_option("--admin-token-file", variable=settings.ADMIN_TOKEN_FILE,
            help=f"file holding the bearer token for admin actions (or the token itself in env "
            f"{settings.ADMIN_TOKEN.name}); none = admin disabled")
@click.option("--admin-token", help="the token itself: avoid, every user of the machine sees it in `ps` "
              "(a warning says so); use the file or the environment variable")
@env_option("--validator-id", variable=settings.VALIDATOR_ID, show_default="host:port")
@env_option("--peer", "peers", variable=settings.PEERS, multiple=True, default=(),
            help="another validator of the contract's set (its API URL), asked to co-sign; repeatable")
@env_option("--public-url", variable=settings.PUBLIC_URL, show_default="http://HOST:PORT")
@env_option("--audit-rate", variable=settings.AUDIT_RATE)
@env_option("--proposer-grace", variable=settings.PROPOSER_GRACE)
@env_option("--cosign-only", variable=settings.COSIGN_ONLY)
@env_option("--lease-seconds", variable=settings.LEASE_SECONDS)
@env_option("--wei-per-work-unit", variable=settings.WEI_PER_WORK_UNIT, help="reward per layer x token, in wei (1 gwei)")
@env_option("--slash-wei", variable=settings.SLASH_WEI, help="stake taken from a blamed worker, in wei (0.01 ether)")
@env_option("--min-stake-wei", variable=settings.MIN_STAKE_WEI, show_default="3 slashes: 0.03 ether",
            help="stake a worker needs to register, to be issued a job and to sign a receipt; at least --slash-wei "
            "(docs/validator.md)")
@env_option("--bundle-deadline", variable=settings.BUNDLE_DEADLINE,
            help="an issued job whose complete bundle has not arrived after this many seconds is soft-invalidated: "
            "nobody paid, nobody slashed")
@http_limit_options
@env_option("--max-body-bytes", variable=settings.MAX_BODY_BYTES, help="largest request body accepted; larger gets 413 (8 MiB)")
@env_option("--validation-workers", variable=settings.VALIDATION_WORKERS)
@env_option("--precision", variable=settings.PRECISION, type=click.Choice(["fp32", "bf16", "fp16"]),
            help="what the model's jobs declare (PROTOCOL I8): stages compute in it, the replay runs in it and the "
            "verdict uses its thresholds; fp32 by default, the only one calibrated on this project's machines")
@env_option("--device", "replay_device", variable=settings.REPLAY_DEVICE)
@env_option("--replay-threads", variable=settings.REPLAY_THREADS, show_default="0: half the cores",
            help="torch threads for replays; half the cores leaves the rest to bundle intake and the API, a machine "
            "that only validates may give it every core")
@env_option("--no-orchestration", variable=settings.NO_ORCHESTRATION,
            help="validate only: no worker registration, groups or dispatch; bundles are taken for the jobs an "
            "orchestrator on the shared ledger issued (a second validator)")
@env_option("--accept-unissued-jobs", variable=settings.ACCEPT_UNISSUED_JOBS,
            help="with --no-orchestration: take bundles of any job, not only those an orchestrator on the shared "
            "ledger issued and awaits (a validator tested on its own; in production workers could then pick their "
            "own seeds, against I1)")
@orchestration_options
def run_command(**_: object) -> int:
    """Serve the validator API, validate queued bundles (replay + verdict), write rewards and slashes to
    the ledger, close epochs and send slashes and anchors to the chain. Choose one chain: --embedded-chain,
    --rpc-url URL --contract ADDR, or --no-chain."""
    from node.launch.validator import run_validator  # imports torch, aiohttp and the ledger when it runs

    return run_validator(arguments())


@validator_group.command("evidence", context_settings=CONTEXT_SETTINGS,
                         short_help="export the evidence of a job's verdict as JSON")
@click.argument("job_id")
@click.option("-o", "--output", type=PATH, help="write to this file instead of stdout")
def evidence_command(**_: object) -> int:
    """Print (or write) the evidence of a job's verdict from the ledger (--db). JOB_ID: 0x-prefixed."""
    from node.launch.validator import export_evidence

    return export_evidence(arguments())


@click.command("verify-evidence", context_settings=CONTEXT_SETTINGS,
               short_help="recompute a verdict from its evidence file (I5)")
@click.argument("file", type=PATH)
@env_option("--model-dir", variable=settings.MODEL_DIRS, type=MODEL_DIRS, multiple=True, default=None,
            help="the model (its manifest must hash to the evidence's model id)")
@click.option("--model", type=click.Choice(["smollm2"]), help="a bundled model instead of --model-dir")
def verify_evidence_command(**_: object) -> int:
    """Judge the evidence's bundle again and check that the stored verdict is the one the evidence implies:
    a handoff complaint by its evidence alone (no model needed), anything else by replaying the model.
    Exit 0 when it is, 1 when it is not. FILE: evidence JSON (GET /v1/jobs/{id}/evidence or `stagewise
    validator evidence`)."""
    from node.launch.validator import verify_evidence

    return verify_evidence(arguments())


COMMANDS = [validator_group, verify_evidence_command]
