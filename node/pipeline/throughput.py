"""How fast this machine runs one decoder layer: the worker's throughput, measured instead of guessed.

The orchestrator gives each stage of a group layers in proportion to its layer-tokens per second
(node/orchestration/grouping.py), so that every stage takes about as long per token. A worker that does not
state its throughput (`stagewise worker run --throughput`) measures it at start: the first layer of the
model it will serve, decoding one token at a time after a short prompt, as a stage does during
generation. It takes about a second and reads only that layer's weights.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from node.pipeline.weights import load_stage

PROMPT_TOKENS = 32


def measure_layer_tokens_per_s(model_dir: str | Path, device: str = "cpu", *, seconds: float = 1.0, most_steps: int = 256) -> float:
    """Layer-tokens per second of one decoder layer of the model in `model_dir` on `device` (at least one
    timed step, then steps until `seconds` have passed or `most_steps` were taken)."""
    layer = load_stage(model_dir, 0, 1, device=device)
    cache = layer.new_cache()
    vocab = layer.config.vocab_size
    with torch.inference_mode():
        layer(torch.arange(PROMPT_TOKENS) % vocab, [cache])
        layer(torch.tensor([1]), [cache])  # the first decode step pays one-off costs
        steps, started = 0, time.perf_counter()
        while steps < most_steps and (steps == 0 or time.perf_counter() - started < seconds):
            layer(torch.tensor([(steps + 2) % vocab]), [cache])
            steps += 1
        elapsed = time.perf_counter() - started
    return steps / elapsed
