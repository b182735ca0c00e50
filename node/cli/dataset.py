"""`stagewise dataset export OUT` and `stagewise dataset verify OUT`: the ledger's accepted samples as a dataset
with a Merkle proof per row, and every row checked against the roots anchored on chain (ledger.dataset)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from node import settings
from node.cli.chain import _client as chain_client
from node.cli.chain import _common as chain_options
from node.cli.options import arguments, help_group
from node.errors import CommandError

PATH = click.Path(path_type=Path)


def _quiet(args: Any) -> bool:
    """No progress bar in JSON mode, nor in a log file or pipe (carriage returns and block characters there)."""
    return bool(args.json) or sys.stderr is None or not sys.stderr.isatty()


def _export(args: Any) -> int:
    from tqdm import tqdm

    from ledger.dataset.export import ExportError, export_dataset
    from ledger.db import LedgerError
    from ledger.store import Ledger

    async def run():
        try:
            ledger = await Ledger.open(settings.database_url(), must_exist=True)
        except LedgerError as error:
            raise CommandError(f"{error}; pass --db URL (or {settings.DB.name}) of the validator's ledger") from None
        try:
            with tqdm(unit="row", desc="exporting", disable=_quiet(args)) as bar:
                return await export_dataset(ledger, args.out, args.format, include_unanchored=args.include_unanchored,
                                            k=args.k, progress=bar.update)
        finally:
            await ledger.close()

    try:
        report = asyncio.run(run())
    except (ExportError, OSError) as error:
        raise CommandError(f"{error}; choose another OUT directory or --format") from None
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        print(f"exported {report.rows} rows ({report.unanchored_rows} unanchored) of {report.tasks} tasks on "
              f"{len(report.models)} model(s) from {report.epochs} epochs, and {report.pairs} pass@k rows (k = "
              f"{report.k}) to {report.out} in {report.seconds:.1f} s; verify with `stagewise dataset verify "
              f"{report.out} --rpc-url URL --contract 0x…`")
    return 0


def _verify(args: Any) -> int:
    from tqdm import tqdm

    from ledger.chain.errors import ChainError
    from ledger.dataset.verify import ChainRoots, verify_dataset

    roots = ChainRoots(chain_client(args))
    try:
        with tqdm(unit="row", desc="verifying", disable=_quiet(args)) as bar:
            result = verify_dataset(args.out, roots, progress=bar.update)
    except FileNotFoundError as error:
        raise CommandError(f"{error}; pass the directory `stagewise dataset export` wrote") from None
    except (ChainError, OSError) as error:
        raise CommandError(f"reading the anchored roots: {error}; check --rpc-url and --contract") from None
    if args.json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        for failure in result.failures:
            print(f"FAIL {failure}")
        if result.failed > len(result.failures):
            print(f"... and {result.failed - len(result.failures)} more failing rows")
        verdict = "ok" if result.ok else "FAILED"
        print(f"{verdict}: {result.held} of {result.rows} rows hold against the entries roots of {result.epochs} "
              f"epoch(s) anchored on chain ({roots.calls} RPC calls, {result.seconds:.1f} s)")
    return 0 if result.ok else 1


@help_group("dataset", short_help="export the verified dataset; verify it against the chain")
def dataset_group() -> None:
    """The verified dataset: one row per accepted job, each with the Merkle proof of its journal entry."""


@dataset_group.command("export", short_help="write the dataset of the ledger's accepted, anchored jobs")
@click.argument("out", type=PATH)
@click.option("--format", type=click.Choice(["parquet", "jsonl"]), default="parquet", show_default=True)
@click.option("--include-unanchored", is_flag=True,
              help="also rows of epochs not anchored yet (and past the last closed one): `verify` fails those")
@click.option("--k", type=click.IntRange(1, None), help="the k of pass@k",
              show_default="the fewest samples any task has on a model")
@click.option("--json", is_flag=True, help="print the report as JSON")
def export_command(**_: object) -> int:
    """Write the dataset of the ledger (--db) into the directory OUT: one row per accepted job of an anchored
    epoch (blamed jobs never), with its journal entry's Merkle proof, pass@k per task and model, and a card."""
    return _export(arguments())


@dataset_group.command("verify", short_help="check every row of a dataset against the chain")
@click.argument("out", type=PATH)
@chain_options(key=False)
@click.option("--json", is_flag=True, help="print the result as JSON")
def verify_command(**_: object) -> int:
    """Check every row of the dataset in OUT against the entries root its epoch anchored on chain; name each
    row that fails (exit status 1)."""
    return _verify(arguments())


COMMANDS = [dataset_group]
