"""`stagewise ledger ...`: audit and read the ledger from the command line (the commands are listed in
`ledger_group`'s help, which `stagewise ledger --help` prints)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import click

from ledger.amounts import ether
from node import settings
from node.cli.options import arguments, help_group
from node.errors import CommandError


def _run(body: Callable[[Any], Awaitable[int]], *, create: bool = False) -> int:
    """Run `body` on the ledger; a SQLite ledger that is not there is an error unless `create`, and so is
    an argument the ledger refuses (an address that is none: EntryError)."""

    async def main() -> int:
        from ledger.db import LedgerError
        from ledger.journal import EntryError
        from ledger.store import Ledger

        try:
            ledger = await Ledger.open(settings.database_url(), must_exist=not create)
        except LedgerError as error:
            raise CommandError(str(error)) from error
        try:
            return await body(ledger)
        except EntryError as error:
            raise CommandError(str(error)) from error
        finally:
            await ledger.close()

    return asyncio.run(main())


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _verify(args: Any) -> int:
    async def body(ledger: Any) -> int:
        from tqdm import tqdm

        head, _ = await ledger.head()
        with tqdm(total=head, unit="entry", disable=args.json or head < 50_000, desc="verifying") as bar:
            report = await ledger.verify(progress=bar.update)
        if args.json:
            _print_json(report.to_json())
        elif report.ok:
            print(f"ok: {report.entries} journal entries and {report.epochs} epochs check out")
        else:
            where = f" at entry {report.first_bad_seq}" if report.first_bad_seq is not None else ""
            print(f"MISMATCH{where}: {report.problem}")
        return 0 if report.ok else 1

    return _run(body)


def _leaderboard(args: Any) -> int:
    async def body(ledger: Any) -> int:
        page = await ledger.leaderboard(args.offset, args.limit)
        if args.json:
            _print_json(page.to_json())
            return 0
        print(f"{'rank':>5}  {'worker':42}  {'rewards':>24}  {'jobs':>7}  {'work units':>12}  {'slashes':>7}  {'stake':>20}")
        for s in page.items:
            print(
                f"{s.rank:>5}  {s.address:42}  {ether(s.rewards):>24}  {s.accepted_jobs:>7}  {s.work_units:>12}"
                f"  {s.slashes:>7}  {ether(s.stake):>20}"
            )
        print(f"{len(page.items)} of {page.total} workers (offset {page.offset})")
        return 0

    return _run(body)


def _slashes(args: Any) -> int:
    async def body(ledger: Any) -> int:
        page = await ledger.slashes(args.offset, args.limit, worker=args.worker)
        if args.json:
            _print_json(page.to_json())
            return 0
        for s in page.items:
            print(f"entry {s.seq}: {s.worker} lost {ether(s.amount)} for job {s.job_id} stage {s.stage}")
            print(f"    {s.reason or 'slashed'}: {_why(s.evidence)}")
            print(f"    evidence {s.evidence_hash} (the verifier's figures: --json)")
        print(f"{len(page.items)} of {page.total} slashes (offset {page.offset})")
        return 0

    return _run(body)


def _why(evidence: Any, width: int = 200) -> str:
    """What the verifier found, in a line: its own sentence when it wrote one, else its figures, cut short."""
    figures = evidence.get("figures") if isinstance(evidence, dict) else None
    text = figures.get("reason") if isinstance(figures, dict) else None
    if not isinstance(text, str) or not text:
        text = json.dumps(evidence, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def _worker(args: Any) -> int:
    async def body(ledger: Any) -> int:
        standing = await ledger.worker(args.address)
        if standing is None:
            raise CommandError(f"no worker {args.address} in the ledger")
        history = await ledger.worker_history(args.address, args.offset, args.limit)
        flags = await ledger.drift_flags(worker=args.address, limit=5)
        if args.json:
            _print_json({"standing": standing.to_json(), "history": history.to_json(),
                         "drift_flags": [flag.__dict__ for flag in flags]})
            return 0
        print(f"worker {standing.address}: rank {standing.rank}, stake {ether(standing.stake)}")
        print(
            f"  rewards {ether(standing.rewards)} over {standing.accepted_jobs} accepted stages"
            f" ({standing.work_units} work units); {standing.slashes} slashes ({ether(standing.slashed_amount)})"
        )
        for flag in flags:
            print(f"  drift flag: job {flag.job_id} stage {flag.stage} ({flag.precision}, over {flag.jobs} jobs): "
                  "kept out of the groups for a while")
        for e in history.items:
            where = f" job {e.job_id} stage {e.stage}" if e.job_id else ""
            print(f"  entry {e.seq}: {e.kind} {ether(e.amount)}{where}")
        print(f"{len(history.items)} of {history.total} entries (offset {history.offset})")
        return 0

    return _run(body)


def _epochs(args: Any) -> int:
    async def body(ledger: Any) -> int:
        if args.close:
            closed = await ledger.close_epoch()
            if closed is None:
                print("nothing to close: no journal entries since the last epoch")
            else:
                print(f"closed epoch {closed.number} over entries {closed.first_seq}..{closed.last_seq}")
        page = await ledger.epochs(args.offset, args.limit)
        if args.json:
            _print_json(page.to_json())
            return 0
        for ep in page.items:
            anchored = f"anchored in {ep.anchor_tx}" if ep.anchor_tx else "not anchored yet"
            print(
                f"epoch {ep.number}: entries {ep.first_seq}..{ep.last_seq} ({ep.entry_count}),"
                f" rewards {ether(ep.total_rewards)}, {anchored}"
            )
            print(f"    entries root {ep.entries_root}\n    rewards root {ep.rewards_root}")
        print(f"{len(page.items)} of {page.total} epochs")
        return 0

    return _run(body)


def _proof(args: Any) -> int:
    async def body(ledger: Any) -> int:
        proof = await ledger.reward_proof(args.address, args.epoch)
        if proof is None:
            raise CommandError(f"no reward for {args.address} in epoch {args.epoch or 'latest'} (or no such epoch)")
        _print_json(proof.to_json())
        return 0

    return _run(body)


def _migrate(args: Any) -> int:
    async def body(ledger: Any) -> int:
        print(f"schema at head: {ledger.safe_url}")  # opening the ledger already upgraded it
        return 0

    return _run(body, create=True)


def _page_options(limit: int = 20):
    def decorate(function):
        function = click.option("--json", is_flag=True, help="print JSON")(function)
        function = click.option("--limit", type=int, default=limit, help="rows to show, at most 500")(function)
        return click.option("--offset", type=int, default=0, help="skip this many rows")(function)

    return decorate


@help_group("ledger", short_help="audit and read the ledger (verify, leaderboard, slashes, worker, epochs, proof)")
def ledger_group() -> None:
    """Audit and read the ledger from the command line.

    \b
    stagewise ledger verify                 recompute the hash chain, totals and epoch roots; exit 1 on a mismatch
    stagewise ledger leaderboard [--limit N --offset K]
    stagewise ledger slashes [--worker ADDR]
    stagewise ledger worker ADDR            a worker's standing and its latest journal entries
    stagewise ledger epochs [--close]       closed epochs (and close a new one)
    stagewise ledger proof ADDR [--epoch N] the Merkle proof a worker passes to the contract's claim()
    stagewise ledger migrate                bring the schema to the latest Alembic revision

    The database is the global `--db` / STAGEWISE_DB, else the SQLite file in the data directory. Every
    reading command takes `--json` for machine-readable output.
    """


@ledger_group.command("verify", short_help="recompute the hash chain and epoch roots; name the first mismatch")
@click.option("--json", is_flag=True, help="print the report as JSON")
def verify_command(**_: object) -> int:
    """Recompute the hash chain, totals and epoch roots; name the first mismatch (exit status 1)."""
    return _verify(arguments())


@ledger_group.command("leaderboard", short_help="workers ranked by total reward")
@_page_options()
def leaderboard_command(**_: object) -> int:
    """Workers ranked by total reward."""
    return _leaderboard(arguments())


@ledger_group.command("slashes", short_help="slashing history, newest first, with the evidence figures")
@click.option("--worker", help="only this worker's slashes")
@_page_options()
def slashes_command(**_: object) -> int:
    """Slashing history, newest first, with the evidence figures."""
    return _slashes(arguments())


@ledger_group.command("worker", short_help="one worker's standing and journal history, newest first")
@click.argument("address")
@_page_options()
def worker_command(**_: object) -> int:
    """One worker's standing and journal history, newest first. ADDRESS: the worker's Ethereum address."""
    return _worker(arguments())


@ledger_group.command("epochs", short_help="closed epochs, newest first")
@click.option("--close", is_flag=True, help="first close an epoch over the entries since the last one")
@_page_options()
def epochs_command(**_: object) -> int:
    """Closed epochs, newest first."""
    return _epochs(arguments())


@ledger_group.command("proof", short_help="a worker's cumulative reward and Merkle proof for claim()")
@click.argument("address")
@click.option("--epoch", type=int, help="epoch number", show_default="the latest")
def proof_command(**_: object) -> int:
    """A worker's cumulative reward and Merkle proof for the contract's claim(). ADDRESS: the worker's
    Ethereum address."""
    return _proof(arguments())


@ledger_group.command("migrate", short_help="bring the database schema to the latest migration")
def migrate_command() -> int:
    """Bring the database schema to the latest Alembic revision."""
    return _migrate(arguments())


COMMANDS = [ledger_group]
