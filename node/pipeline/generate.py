"""`stagewise generate`: run a prompt through a local S-stage pipeline on loopback and stream the answer.

The command line (node/cli/pipeline.py) parses the flags; `run_generate(args)` does the rest.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from node.errors import CommandError
from node.pipeline.client import StageClientError
from node.pipeline.local import LocalPipeline
from node.pipeline.model import ModelConfig
from node.pipeline.smollm2 import SmolLM2Unavailable, chat_prompt_ids, load_tokenizer, smollm2_dir
from node.pipeline.weights import WeightsError, read_generation_defaults, resolve_model_dir
from node.protocol.job import JobSpecError, SamplingParams


def run_generate(args: Any) -> int:
    """Start the stages, generate and print; the exit status."""
    import asyncio

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the stages share this machine's cores


    try:
        model_dir = resolve_model_dir(args.model_dir) if args.model_dir else smollm2_dir()
    except (SmolLM2Unavailable, WeightsError) as error:
        raise CommandError(str(error)) from None
    if not (model_dir / "config.json").is_file():
        raise CommandError(f"{model_dir} has no config.json: not a model directory")
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer_config.json").is_file():
        raise CommandError(f"{model_dir} has no tokenizer: `generate` needs one to read the prompt")
    if args.stages < 1:
        raise CommandError("--stages must be at least 1")
    if not getattr(args, "verbose", False):
        import logging

        logging.getLogger("stagewise.pipeline").setLevel(logging.WARNING)  # keep the streamed answer readable
    tokenizer = load_tokenizer(model_dir)
    try:
        return asyncio.run(_generate(args, model_dir, tokenizer))
    except ValueError as error:
        raise CommandError(str(error)) from None


async def _generate(args, model_dir, tokenizer) -> int:
    import time


    config = ModelConfig.from_dir(model_dir)
    if args.stages > config.num_layers:
        raise CommandError(f"{config.num_layers} layers cannot make {args.stages} stages")
    if args.raw or not getattr(tokenizer, "chat_template", None):
        prompt_ids = tokenizer.encode(args.prompt)
    else:
        prompt_ids = chat_prompt_ids(tokenizer, args.prompt)
    stop_ids = set(config.eos_token_ids)
    generation = read_generation_defaults(model_dir).get("eos_token_id")
    stop_ids.update(generation if isinstance(generation, list) else [generation] if generation is not None else [])
    if tokenizer.eos_token_id is not None:
        stop_ids.add(tokenizer.eos_token_id)
    try:
        sampling = SamplingParams(args.temperature, args.top_p, args.top_k, args.max_new_tokens, tuple(sorted(stop_ids)))
    except JobSpecError as error:
        raise CommandError(str(error)) from None
    print(f"starting {args.stages} stages of {model_dir.name} on loopback...", file=sys.stderr, flush=True)
    async with LocalPipeline(model_dir, args.stages, processes=args.processes, wire_dtype=args.wire_dtype) as pipe:
        bounds = ", ".join(f"[{s.layer_start},{s.layer_end})" for s in pipe.assignment.stages)
        print(f"stages ready: layers {bounds}; {len(prompt_ids)} prompt tokens", file=sys.stderr, flush=True)
        tokens: list[int] = []
        shown = ""

        def show(new: list[int]) -> None:
            nonlocal shown
            tokens.extend(t for t in new if t not in stop_ids)
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                return  # half of a multi-byte character: wait for the rest
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text

        started = time.monotonic()
        spec = pipe.spec(prompt_ids, sampling, args.seed)
        try:
            output = await pipe.run(spec, on_tokens=show)
        except StageClientError as error:
            raise CommandError(f"generation failed: {error.message}") from None
        elapsed = time.monotonic() - started
        sys.stdout.write("\n")
        print(f"{len(output)} tokens in {elapsed:.1f} s ({len(output) / elapsed:.1f} tokens/s); job {spec.job_id_hex}",
              file=sys.stderr)
        if args.stats:
            for stats in await pipe.stats():
                print(f"stage {stats['stage_index']}: {stats['steps']} steps, compute {stats['compute_s']:.2f} s, "
                      f"proofs {stats['proof_s'] + stats['check_s']:.3f} s, sent {stats['bytes_sent']} B", file=sys.stderr)
    return 0
