"""What every command module shares: options tied to a settings variable, value types, groups that print
their help, and the hand-over of parsed values to a handler.

Command modules import only click and this at the top: anything heavy (torch, web3, transformers,
sqlalchemy) is imported inside the handler it serves, so that `stagewise --help` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from node import settings

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 110}
PATH = click.Path(path_type=Path)


class PathList(click.Path):
    """Paths, repeatable; from an environment variable ':'-separated, empty parts skipped."""

    def split_envvar_value(self, rv: str):
        return [part for part in super().split_envvar_value(rv) if part]


class Parsed(click.ParamType):
    """A value type from a parse function: its ValueError is a usage error (exit status 2) naming the option."""

    def __init__(self, parse: Callable[[str], Any], name: str) -> None:
        self.parse = parse
        self.name = name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default already parsed
        try:
            return self.parse(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def env_option(*decls: str, variable: settings.Variable, **kwargs: Any):
    """An option that reads `variable` when it is not given: its envvar (shown in --help), its default, and
    its one-line doc as help unless `help` says more."""
    kwargs.setdefault("default", variable.default)
    kwargs.setdefault("help", variable.doc)
    if variable.type is bool:
        kwargs.setdefault("is_flag", True)
    elif variable.type is Path:
        kwargs.setdefault("type", PATH)
    else:
        kwargs.setdefault("type", variable.type)
    return click.option(*decls, envvar=variable.name, show_envvar=True, **kwargs)


def help_group(name: str, **kwargs: Any) -> Callable[[Callable], click.Group]:
    """A command group that, run without a command, prints its help and exits with status 2."""

    def decorate(function: Callable) -> click.Group:
        @click.pass_context
        def callback(ctx: click.Context, **params: Any) -> None:
            function(**params)
            if ctx.invoked_subcommand is None:
                click.echo(ctx.get_help())
                ctx.exit(2)

        callback.__doc__ = function.__doc__
        return click.group(name, invoke_without_command=True, context_settings=CONTEXT_SETTINGS, **kwargs)(callback)

    return decorate


def arguments() -> SimpleNamespace:
    """The parsed values of the running command, with the global ones (--data-dir, --db, -v): what its
    handler takes."""
    ctx = click.get_current_context()
    values: dict[str, Any] = {}
    for context in reversed([*_lineage(ctx)]):
        values.update(context.params)
    return SimpleNamespace(**values)


def _lineage(ctx: click.Context | None):
    while ctx is not None:
        yield ctx
        ctx = ctx.parent


def http_limit_options(function: Callable) -> Callable:
    """The per-client HTTP limits (`node.http.limits.HttpLimits`) of a command that serves HTTP."""
    body_factor = 3  # HttpLimits.body_timeout_s is this many times header_timeout_s
    options = [
        env_option("--max-connections", variable=settings.MAX_CONNECTIONS,
                   help="HTTP: open connections in all; more are closed at once"),
        env_option("--max-connections-per-client", variable=settings.MAX_CONNECTIONS_PER_CLIENT,
                   help="HTTP: open connections from one address"),
        env_option("--requests-per-second", variable=settings.REQUESTS_PER_SECOND,
                   help="HTTP: average requests per second from one address, bursts of 1000; past it 429"),
        env_option("--header-timeout", variable=settings.HEADER_TIMEOUT,
                   help=f"HTTP: seconds a connection has to send a request's headers, and as long again for its "
                   f"body times {body_factor}"),
    ]
    for option in reversed(options):
        function = option(function)
    return function
