"""`stagewise devnet`: a chain, a validator and two groups of stage workers on this machine, a cheater caught.

The devnet itself is node/launch/devnet.py; this module parses its flags.
"""

from __future__ import annotations

import click

from node.cli.options import CONTEXT_SETTINGS, PATH, Parsed, arguments

DEFAULT_CHEAT = "worker=4"  # its kind follows --precision: perturb 1e-3 in fp32, int4 per-group weights in bf16/fp16


def _cheat(text: str):
    from node.launch.devnet import Cheat

    return Cheat.parse(text)


@click.command("devnet", context_settings=CONTEXT_SETTINGS,
               short_help="run a local devnet: chain, validator, two groups of stage workers, a cheater caught")
@click.option("--workers", type=int, default=6, help="stage workers to start (6: two groups of 3)")
@click.option("--stages", type=int, default=3, help="stages per group")
@click.option("--tasks", type=int, default=6, help="tasks to run from the bundled arithmetic set")
@click.option("--samples-per-task", type=click.IntRange(1, 64), default=2,
              help="times each task runs, each with its own seed: the dataset's pass@k per task")
@click.option("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy, every sample alike)")
@click.option("--max-new-tokens", type=int, default=24, help="token budget per task")
@click.option(
    "--cheat", type=Parsed(_cheat, "cheat"), default=DEFAULT_CHEAT,
    help="which worker cheats and how, e.g. worker=4,kind=perturb,scale=1e-3 (perturb: relative noise on its "
    "layers' weights; int4:GROUP or sparse-2-4: cheaper weights; or a handoff lie: quiet, equivocate, "
    "false-complaint, docs/handoff.md); without a kind, perturb in fp32 and int4 in bf16/fp16; 'none' for an "
    "honest devnet",
)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32",
              help="what the jobs declare (PROTOCOL I8): every stage computes in it, hands over in it, and the "
              "validator replays in it with its thresholds")
@click.option("--port", type=int, default=8700, help="the validator's port: API and dashboard")
@click.option("--timeout", type=float, default=600.0, help="give up after this many seconds")
@click.option("--serve", is_flag=True, help="keep the validator and its dashboard up until Ctrl-C")
@click.option("--model-dir", type=PATH, help="a model directory instead of the bundled SmolLM2-135M-Instruct")
def devnet_command(**_: object) -> int:
    """Run a local devnet, the whole story on one machine (what `make demo` runs).

    It starts a validator node with an in-process chain (the staking contract deployed, served on loopback
    JSON-RPC) and a SQLite ledger, creates and stakes worker keys, starts stage workers as separate
    processes (each loads only its layers of SmolLM2-135M-Instruct), lets the orchestrator form groups of
    three stages and run a bundled set of arithmetic tasks on them, and follows it all through the
    validator's public API until every job has a verdict and an epoch is anchored on chain. One worker
    cheats (--cheat): it perturbs its layers' weights, computes and proves honestly on top of them, and is
    caught by the validator's replay, blamed and slashed, while the stages beside it are not. At the end the
    best-paid worker claims its reward on chain with a Merkle proof from the validator's API (`stagewise
    claim`), and the run's dataset is exported from the ledger and every row verified against the chain
    (`stagewise dataset export` and `dataset verify`).

    Every part is a real process talking HTTP on loopback: the same commands an operator runs (`stagewise
    validator run`, `stagewise worker run`), so the devnet is also their integration test.
    """
    from node.launch.devnet import run_devnet

    return run_devnet(arguments())


COMMANDS = [devnet_command]
