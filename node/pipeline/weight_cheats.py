"""Cheaper stand-ins for a model's weights: what a worker that cuts corners would load instead of the real ones.

Each is a plain function of one weight matrix that returns a new matrix of the same shape and dtype, so the
devnet's cheater (node/worker/cheats.py), the tests and the calibration bench apply the same change:

- `quantize_int4_per_group`: 4-bit integers with one scale per group of `group` consecutive inputs of a row
  (symmetric, round to nearest, levels -8..7), dequantized back: what GPTQ/AWQ-style int4 checkpoints compute.
- `sparsify_2_4`: in every 4 consecutive inputs of a row, the 2 smallest magnitudes set to zero: NVIDIA's
  2:4 structured sparsity, which halves the multiply work on sparse tensor cores.

Both act on the last dimension (a Linear's inputs); a tensor that is not a matrix (norm weights, biases) is
returned as it is, since a cheater gains nothing by changing those.
"""

from __future__ import annotations

import torch


def quantize_int4_per_group(weight: torch.Tensor, group: int = 128) -> torch.Tensor:
    """`weight` rounded to 4-bit integers, one fp32 scale per `group` inputs of each row, dequantized to its dtype.

    A row whose length is not a multiple of `group` has a shorter last group."""
    if weight.dim() != 2:
        return weight.clone()
    if group < 1:
        raise ValueError(f"group must be >= 1, not {group}")
    rows, columns = weight.shape
    padded = -(-columns // group) * group
    w = torch.zeros(rows, padded, dtype=torch.float32, device=weight.device)
    w[:, :columns] = weight.float()
    groups = w.view(rows, padded // group, group)
    scale = groups.abs().amax(dim=-1, keepdim=True) / 7.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    quantized = (groups / scale).round().clamp(-8, 7) * scale
    return quantized.view(rows, padded)[:, :columns].to(weight.dtype)


def sparsify_2_4(weight: torch.Tensor) -> torch.Tensor:
    """`weight` with the 2 smallest magnitudes of every 4 consecutive inputs of a row set to zero (2:4 sparsity).

    A trailing group of fewer than 4 inputs is kept whole."""
    if weight.dim() != 2:
        return weight.clone()
    rows, columns = weight.shape
    whole = columns // 4 * 4
    out = weight.clone()
    if whole == 0:
        return out
    blocks = weight[:, :whole].reshape(rows, whole // 4, 4)
    smallest = blocks.abs().float().topk(2, dim=-1, largest=False).indices
    out[:, :whole] = blocks.scatter(-1, smallest, torch.zeros_like(smallest, dtype=blocks.dtype)).reshape(rows, whole)
    return out
