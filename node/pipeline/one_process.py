"""The baseline: one process running the whole model over several sequences at once.

Same decoder, same sampler, same stop rules as the pipeline (a stop id or the token budget), and the same
batching (all sequences' rows through each matmul together), so a pipeline's tokens can be compared with it
token for token, and the bench can set the pipeline's throughput beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from node.pipeline.model import StageModel
from node.protocol.job import JobSpec
from node.toploc.sampling import sample_next


def generate_whole(model: StageModel, specs: Sequence[JobSpec]) -> list[tuple[int, ...]]:
    """Every spec's output tokens, generated together in one process (prefill all, then decode in lockstep)."""
    if not (model.is_first and model.is_last):
        raise ValueError("generate_whole needs the whole model")
    caches = [model.new_cache() for _ in specs]
    outputs: list[list[int]] = [[] for _ in specs]
    live = list(range(len(specs)))
    inputs = [torch.tensor(spec.prompt_token_ids, dtype=torch.long) for spec in specs]
    while live:
        hidden = model(torch.cat([inputs[i] for i in live]), [caches[i] for i in live], [inputs[i].shape[0] for i in live])
        last_rows = torch.tensor([inputs[i].shape[0] for i in live]).cumsum(0) - 1
        logits = model.logits(hidden[last_rows])
        still = []
        for row, i in enumerate(live):
            spec = specs[i]
            position = caches[i].length
            token = int(sample_next(logits[row : row + 1], spec.sampling, spec.seed, torch.tensor([position]))[0])
            outputs[i].append(token)
            done = token in spec.sampling.stop_ids or len(outputs[i]) >= spec.sampling.max_new_tokens
            if not done and position + 1 < model.config.max_position_embeddings:
                inputs[i] = torch.tensor([token], dtype=torch.long)
                still.append(i)
        live = still
    return [tuple(o) for o in outputs]
