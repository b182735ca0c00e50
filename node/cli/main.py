"""The `stagewise` command.

Each area of the node keeps its own commands in a module with a `register(subparsers)` function; this
file only assembles them. Command modules must import heavy libraries (torch, web3) inside their
handlers, so that `stagewise --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from node import settings

# Modules that add sub-commands. Each exposes `register(subparsers) -> None`; every parser it adds sets
# `func=handler`, where `handler(args) -> int` returns the exit status.
COMMAND_MODULES: tuple[str, ...] = (
    "node.cli.ledger",
    "node.cli.chain",
    "node.cli.wallet",
    "node.cli.toploc",
    "node.cli.pipeline",
    "node.cli.worker",
    "node.cli.validator",
    "node.cli.groups",
    "node.cli.devnet",
)


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exit status 1, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stagewise",
        description="Verified pipeline-parallel LLM inference: stage workers, validators and the ledger.",
    )
    parser.add_argument(
        "--data-dir",
        help=f"where keys, caches and the default SQLite ledger live (env {settings.HOME_ENV}, default ~/.stagewise)",
    )
    parser.add_argument(
        "--db", help=f"SQLAlchemy URL of the ledger (env {settings.DB_ENV}, default a SQLite file in the data dir)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue  # an area that is not built yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_dir:
        os.environ[settings.HOME_ENV] = args.data_dir
    if args.db:
        os.environ[settings.DB_ENV] = args.db
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `stagewise ledger slashes | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit does not fail again
        return 0
    except Exception as error:  # noqa: BLE001 - anything else is still one line; -v shows the traceback
        if args.verbose:
            raise
        print(f"error: {explain(error)} (-v shows the traceback)", file=sys.stderr)
        return 1


def explain(error: BaseException) -> str:
    """One line for an error no command turned into a CommandError: what went wrong and, where it is known,
    what to do about it."""
    import errno

    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        return f"{text}: another process listens there; choose another --port or stop it"
    name = type(error).__name__
    module = type(error).__module__
    if name == "LedgerError":
        return f"{text}; check --db (or STAGEWISE_DB)"
    if module.startswith(("requests", "urllib3")) or name in ("ChainError", "ContractRevert"):
        return f"{name}: {text[:300]}; check --rpc-url and --contract"
    return f"{name}: {text[:300]}"


if __name__ == "__main__":
    # Run the package's module, not this __main__ copy: handlers raise node.cli.main.CommandError, which a
    # `python -m node.cli.main` run would otherwise not catch (a traceback instead of one line).
    from node.cli.main import main as package_main

    sys.exit(package_main())
