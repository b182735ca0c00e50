"""`stagewise groups`: the live picture of a validator's groups, read from its GET /v1/groups."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import click

from ledger import json_input
from node import settings
from node.cli.options import CONTEXT_SETTINGS, arguments, env_option

DEFAULT_VALIDATOR = "http://127.0.0.1:8700"


@click.command("groups", context_settings=CONTEXT_SETTINGS,
               short_help="list a running validator's groups: stages, layer ranges, throughput, spares")
@env_option("--validator", variable=settings.VALIDATOR_URL, default=DEFAULT_VALIDATOR, help="validator base URL")
@click.option("--model-id", help="the model whose groups to show, for a validator of several (default: its first)")
@click.option("--json", is_flag=True, help="print the raw JSON instead of a table")
@click.option("--timeout", type=float, default=10.0, help="seconds to wait for the validator")
def groups_command(**_: object) -> int:
    """Ask a running validator (GET /v1/groups and /v1/orchestrator/progress) which groups it has formed:
    every stage's worker, layer range and measured throughput, the spare workers, and task progress."""
    return cmd_groups(arguments())


COMMANDS = [groups_command]


def cmd_groups(args) -> int:
    from node.errors import CommandError

    base = args.validator.rstrip("/")
    query = f"?model_id={args.model_id}" if args.model_id else ""
    groups = _get(base + "/v1/groups" + query, args.timeout, CommandError)
    try:
        progress = _get(base + "/v1/orchestrator/progress" + query, args.timeout, CommandError)
    except CommandError:
        progress = None
    if args.json:
        print(json.dumps({"groups": groups, "progress": progress}, indent=2))
        return 0
    print(render(groups, progress))
    return 0


def render(groups: dict[str, Any], progress: dict[str, Any] | None = None) -> str:
    """The table `stagewise groups` prints (a pure function of the two JSON documents)."""
    lines = [f"model {groups.get('model_id', '?')}  layers {groups.get('num_layers', '?')}  groups {len(groups.get('groups', []))}"]
    others = [m for m in groups.get("models", []) if m != groups.get("model_id")]
    if others:
        lines.append(f"(this validator also runs {', '.join(others)}: --model-id to see its groups)")
    for group in groups.get("groups", []):
        measured = group.get("measured_tokens_per_s")
        lines.append(
            f"\ngroup {group['group_id']}  regions {','.join(group.get('regions', []))}  "
            f"est {group.get('estimated_tokens_per_s', 0):.1f} tok/s"
            + (f"  measured {measured:.1f} tok/s" if measured else "")
        )
        lines.append(f"  {'stage':>5}  {'worker':<42}  {'layers':<9}  {'n':>3}  {'region':<10}  {'layer-tok/s':>11}")
        for stage in group.get("stages", []):
            span = f"[{stage['layer_start']},{stage['layer_end']})"
            lines.append(
                f"  {stage['index']:>5}  {stage['worker']:<42}  {span:<9}  {stage['layer_end'] - stage['layer_start']:>3}  "
                f"{stage.get('region', ''):<10}  {stage.get('layer_tokens_per_s', 0):>11.0f}"
            )
    spares = groups.get("spares", [])
    lines.append(f"\nspares: {', '.join(spares) if spares else 'none'}")
    unhealthy = [w["address"] for w in groups.get("workers", []) if not w.get("healthy", True)]
    if unhealthy:
        lines.append(f"missing heartbeats: {', '.join(unhealthy)}")
    if progress and "tasks_total" in progress:
        accuracy = progress.get("accuracy")
        lines.append(
            f"tasks {progress['tasks_done']}/{progress['tasks_total']} done, {progress.get('tasks_failed', 0)} failed, "
            f"correct {progress['correct']}/{progress['checked']}"
            + (f" ({accuracy:.0%})" if accuracy is not None else "")
            + f", {progress['tokens']} tokens, {progress['tokens_per_s']:.1f} tok/s, {progress['reroutes']} reroutes"
        )
    return "\n".join(lines)


def _get(url: str, timeout: float, error_type: type[Exception]) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json_input.read_json_file(response)
    except urllib.error.HTTPError as error:
        try:
            detail = json_input.read_json_file(error, max_bytes=1 << 16)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = error.reason
        raise error_type(f"{url}: HTTP {error.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise error_type(f"cannot read {url}: {getattr(error, 'reason', error)}") from None
