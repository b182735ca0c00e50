"""Cheaper weights a cheating stage might run instead of the declared model: what the attack matrix of the
calibration measures (node/pipeline/calibration.py). Each function takes a weight matrix [out, in] and
returns the dequantized (or pruned, or factored) matrix in the same dtype, as a worker would run it.

- `int4_per_group`: round-to-nearest 4-bit, asymmetric, one scale and zero point per `group` input columns
  (GPTQ / AWQ storage without their error correction; group 64 divides every hidden size here and is finer
  than the usual 128, so it is the *harder* case to catch);
- `sparse_2_4`: in every 4 consecutive inputs the 2 smallest magnitudes zeroed (NVIDIA 2:4 sparsity);
- `low_rank`: the best rank-`fraction * min(out, in)` approximation (truncated SVD);
- `int8_per_channel`: symmetric 8-bit, one scale per output row (LLM.int8 without outliers, W8A16);
- `fp8_e4m3`: e4m3 with one scale per output row (FP8 W8A16).

`cheat_weights(stage, kind)` applies one of them to every projection of the stage's decoder layers (not the
embedding, norms or LM head), in place.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import nn

WeightCheat = Literal["int4", "sparse_2_4", "low_rank", "int8", "fp8"]


def int4_per_group(weight: torch.Tensor, group: int = 64) -> torch.Tensor:
    out, cols = weight.shape
    group = min(group, cols)
    w = weight.float().reshape(out, cols // group, group)
    low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp_min(1e-12)
    codes = ((w - low) / scale).round().clamp(0, 15)
    return (codes * scale + low).reshape(out, cols).to(weight.dtype)


def sparse_2_4(weight: torch.Tensor) -> torch.Tensor:
    out, cols = weight.shape
    w = weight.reshape(out, cols // 4, 4)
    smallest = w.abs().float().argsort(-1)[..., :2]
    return w.scatter(-1, smallest, 0).reshape(out, cols)


def low_rank(weight: torch.Tensor, fraction: float = 0.25) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    rank = max(1, int(fraction * s.numel()))
    return ((u[:, :rank] * s[:rank]) @ vh[:rank]).to(weight.dtype)


def int8_per_channel(weight: torch.Tensor) -> torch.Tensor:
    scale = (weight.float().abs().amax(-1, keepdim=True) / 127).clamp_min(1e-12)
    return ((weight.float() / scale).round().clamp(-127, 127) * scale).to(weight.dtype)


def fp8_e4m3(weight: torch.Tensor) -> torch.Tensor:
    scale = (weight.float().abs().amax(-1, keepdim=True) / 448).clamp_min(1e-12)
    return ((weight.float() / scale).to(torch.float8_e4m3fn).float() * scale).to(weight.dtype)


CHEATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "int4": int4_per_group,
    "sparse_2_4": sparse_2_4,
    "low_rank": low_rank,
    "int8": int8_per_channel,
    "fp8": fp8_e4m3,
}


def cheat_weights(stage: nn.Module, kind: WeightCheat) -> None:
    """Replace every linear weight inside the stage's decoder layers by its `kind` version (in place)."""
    change = CHEATS[kind]
    with torch.no_grad():
        for module in stage.layers.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(change(module.weight))
