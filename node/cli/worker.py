"""`stagewise worker run`: serve one stage of a model for a validator, with a staked key."""

from __future__ import annotations

import re

import click

from node import settings
from node.cli.options import CONTEXT_SETTINGS, PATH, Parsed, arguments, env_option, help_group, http_limit_options

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'8GiB', '512M', '1.5g', '1073741824' -> bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size like 8GiB or 512MiB")
    number, unit = float(match.group(1)), (match.group(2) or "b").lower()
    power = {"b": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit[0]]
    size = int(number * 1024**power)
    if size <= 0:
        raise ValueError("capacity must be positive")
    return size


def _cheat(text: str):
    from node.worker.cheats import Cheat  # its CheatError is a ValueError: a usage error

    return Cheat.parse(text)


@help_group("worker", short_help="run a stage worker (serve layers of a model, sign receipts, earn rewards)")
def worker_group() -> None:
    """Run a stage worker. Start with `stagewise wallet new`, stake on chain, then `stagewise worker run`."""


@worker_group.command(
    "run", context_settings=CONTEXT_SETTINGS,
    short_help="check the stake, register with a validator and serve the assigned stage until SIGTERM",
)
@click.option("--keystore", type=PATH, help="keystore v3 file", show_default="<data dir>/keys/worker.json")
@click.option("--password-file", type=PATH,
              help=f"keystore password file (else ${settings.KEYSTORE_PASSWORD.name}, else a prompt)")
@env_option("--validator", variable=settings.VALIDATOR_URL,
            help="validator base URL; several validator processes sharing one ledger comma-separated (the worker "
            "talks to the one that orchestrates and moves on when it stops)")
@env_option("--rpc-url", variable=settings.RPC_URL, help="chain JSON-RPC URL", show_default="the validator's")
@env_option("--contract", variable=settings.CONTRACT, help="staking contract address", show_default="the validator's")
@click.option("--min-stake", type=int, help="minimum stake in wei to insist on", show_default="the validator's")
@click.option("--host", default="127.0.0.1", help="address the stage server listens on")
@click.option("--port", type=int, default=0, help="stage server port, 0 = a free one")
@click.option("--public-url", help="URL other stages and the validator use to reach this stage server",
              show_default="http://HOST:PORT")
@click.option("--capacity", default="8GiB", type=Parsed(parse_size, "size"),
              help="memory offered for weights and cache, e.g. 8GiB")
@click.option("--throughput", type=float, default=None,
              help="layer-tokens per second this worker offers, which the orchestrator splits layers by",
              show_default="measured at start, about a second decoding one layer of the model")
@click.option("--region", default="local", help="region label used to group nearby workers")
@click.option("--model-dir", type=PATH, multiple=True, help="a model directory this worker may serve (repeatable)")
@click.option("--model", type=click.Choice(["smollm2"]),
              help="a bundled model: smollm2 = SmolLM2-135M-Instruct (converted once into the cache)")
@click.option("--device", default="cpu", help="torch device the stage computes on: cpu, cuda (ROCm builds of torch "
              "call theirs cuda too), cuda:1, ...")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "bf16", "fp16"]),
              help="a precision this worker offers to compute in (repeatable); the validator groups it only for "
              "jobs that declare one of them", show_default="every one the device computes")
@click.option("--heartbeat", type=float, default=5.0, help="seconds between heartbeats")
@click.option(
    "--cheat", type=Parsed(_cheat, "KIND:SCALE"), default=None, metavar="KIND:SCALE",
    help="devnets and demos only: misbehave on purpose to be caught. perturb:1e-3 (relative noise on this "
    "stage's weights; its proofs stay consistent, only the validator's replay catches it), int4:128 or sparse-2-4 "
    "(cheaper weights: int4 per-group or 2:4-sparse, what the bf16 devnet's cheater runs), or a handoff lie: "
    "quiet:0.9 (alter what the proof does not bind), equivocate:0.01 (hand over proofs other than the "
    "receipt's), false-complaint (complain about honest rows); docs/handoff.md",
)
@click.option("--grace", type=float, default=30.0, help="seconds in-flight sequences get at shutdown")
@env_option("--validator-wait", variable=settings.VALIDATOR_WAIT)
@http_limit_options
def run_command(**_: object) -> int:
    """Unlock the keystore, check this key's stake on chain, start a stage server, register with the
    validator's orchestrator, serve the stage it assigns (loading only its layers), sign a receipt for
    every job and deliver bundles to the validator. SIGTERM or Ctrl-C stops it cleanly: in-flight
    sequences get --grace seconds to finish."""
    from node.launch.worker import start_worker  # imports torch, web3 and aiohttp when it runs

    return start_worker(arguments())


COMMANDS = [worker_group]
