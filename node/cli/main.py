"""The `stagewise` command.

Each area of the node keeps its commands in a module of this package that exposes `COMMANDS`, a list of
click commands and groups; this file only assembles them and turns what goes wrong into an exit status.
The command modules parse and hand over: the work is done in the node's areas. They import heavy
libraries (torch, web3, transformers, sqlalchemy) inside their handlers, so that `stagewise --help`
stays instant.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from ledger.errors import StagewiseError
from node import settings
from node.cli.options import CONTEXT_SETTINGS, env_option
from node.errors import CommandError

__all__ = ["CommandError", "build_cli", "main", "parse"]

# Modules that add commands. Each exposes `COMMANDS: list[click.Command]`; a command's callback returns
# its exit status.
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
    "node.cli.dataset",
)


class _Failed(StagewiseError):
    """What a command raised (or a Ctrl-C), carried past click's own handling to `main`."""

    def __init__(self, error: BaseException, verbose: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.verbose = verbose


class _Stagewise(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - main turns each into one line
            raise _Failed(error, bool(ctx.params.get("verbose"))) from error


def build_cli() -> click.Group:
    @click.group(
        "stagewise", cls=_Stagewise, invoke_without_command=True, context_settings=CONTEXT_SETTINGS,
        epilog="Every option that names an env var reads it when the option is not given. "
        "`stagewise COMMAND --help` shows a command's options; the commands are listed above.",
    )
    @env_option("--data-dir", variable=settings.HOME, type=str, show_default="~/.stagewise")
    @env_option("--db", variable=settings.DB, show_default="a SQLite file in the data dir",
                help=f"{settings.DB.doc}; its password may come from the file {settings.DB_PASSWORD_FILE.name} names")
    @click.option("-v", "--verbose", is_flag=True, help="log debug messages, and show the traceback of an error")
    @click.pass_context
    def stagewise(ctx: click.Context, data_dir: str | None, db: str | None, verbose: bool):
        """Verified pipeline-parallel LLM inference: stage workers, validators and the ledger."""
        if data_dir:
            os.environ[settings.HOME.name] = data_dir  # child processes (devnet, local pipelines) see it too
        if db:
            os.environ[settings.DB.name] = db
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        # alembic (imported with the ledger, after this) announces each of its plugins at INFO: seven lines
        # before every ledger command's output or its one-line error
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.DEBUG if verbose else logging.WARNING)
        if ctx.invoked_subcommand is None:
            click.echo(ctx.get_help())
            ctx.exit(2)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue  # an area that is not built yet
        for command in module.COMMANDS:
            stagewise.add_command(command)
    return stagewise


def parse(argv: list[str]) -> tuple[click.Command, dict]:
    """Parse `argv` without running anything: the command it names and that command's values. A usage
    error raises click.UsageError."""
    group: click.Command = build_cli()
    ctx = group.make_context("stagewise", list(argv), resilient_parsing=False)
    while isinstance(group, click.Group):
        args = [*ctx._protected_args, *ctx.args] if hasattr(ctx, "_protected_args") else [*ctx.protected_args, *ctx.args]
        if not args:
            break
        _, group, rest = group.resolve_command(ctx, args)
        ctx = group.make_context(group.name, rest, parent=ctx)
    return group, ctx.params


def main(argv: list[str] | None = None) -> int:
    """Run `stagewise ARGV` (sys.argv without argv) and return its exit status: 0, 1 for an error (one line
    on stderr, the traceback only with -v), 2 for a usage error, 130 for Ctrl-C."""
    cli = build_cli()
    try:
        return int(cli.main(args=argv, prog_name="stagewise", standalone_mode=False) or 0)
    except click.exceptions.ClickException as error:  # a usage error: click's message, status 2
        error.show()
        return error.exit_code
    except click.exceptions.Abort:  # Ctrl-C or end of input at one of click's own prompts
        print("interrupted", file=sys.stderr)
        return 130
    except _Failed as failed:
        return _failure(failed.error, failed.verbose)


def _failure(error: BaseException, verbose: bool) -> int:
    if isinstance(error, CommandError):
        print(f"error: {error}", file=sys.stderr)
        return 1
    if isinstance(error, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    if isinstance(error, BrokenPipeError):  # `stagewise ledger slashes | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit does not fail again
        return 0
    if verbose:
        raise error
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
        return f"{text}; check --db (or {settings.DB.name})"
    if module.startswith(("requests", "urllib3")) or name in ("ChainError", "ContractRevert"):
        return f"{name}: {text[:300]}; check --rpc-url and --contract"
    return f"{name}: {text[:300]}"


if __name__ == "__main__":
    # Run the package's module, not this __main__ copy, so that there is one set of command modules.
    from node.cli.main import main as package_main

    sys.exit(package_main())
