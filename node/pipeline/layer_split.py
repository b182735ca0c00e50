"""How a model's layers are split into contiguous stage ranges: in proportion to each stage's speed,
within its memory, counting the LM head's cost on the last stage.

A pipeline runs at the pace of its slowest stage, so every stage should take about the same time per
token. A decoder layer costs about the same as the next, but the last stage also runs the LM head (a
vocab x hidden product per token; for SmolLM2-135M about eight layers' worth, which is what bench/pipeline.py
measured on an even split: the last stage took 6.0 s of compute against 4.0 and 3.2). So the split counts
the head as `last_extra` layers of work on the last stage and gives that stage correspondingly fewer.
Used by the orchestrator's grouping and by the local pipeline alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ledger.errors import InvalidInput


class SplitError(InvalidInput):
    """Layers that cannot be split as asked (more stages than layers, not enough memory)."""


def split_layers(
    num_layers: int, weights: Sequence[float], caps: Sequence[int], *, last_extra: float = 0.0
) -> tuple[tuple[int, int], ...]:
    """Contiguous ranges [a, b) covering 0..num_layers, each in [1, cap], sized so that every stage's work
    (its layers, plus `last_extra` layers' worth on the last stage) is in proportion to `weights`.

    Continuous water-filling first (shares above a cap are pinned to the cap and the rest re-split), then
    largest-remainder rounding inside the same bounds, so the result is as close to proportional as integers
    allow and deterministic.
    """
    count = len(weights)
    if count == 0 or count != len(caps):
        raise SplitError("one weight and one cap per stage")
    if count > num_layers:
        raise SplitError(f"{count} stages cannot share {num_layers} layers (every stage needs one)")
    if any(cap < 1 for cap in caps) or sum(caps) < num_layers:
        raise SplitError(f"the stages' memory holds {sum(max(c, 0) for c in caps)} of {num_layers} layers")
    if any(not (math.isfinite(w) and w > 0) for w in weights):
        raise SplitError("weights must be positive")
    if not (math.isfinite(last_extra) and last_extra >= 0):
        raise SplitError("the last stage's extra work is a non-negative number of layers")
    low = [1.0] * count
    high = [float(cap) for cap in caps]
    low[-1] += last_extra
    high[-1] += last_extra
    shares = _water_fill(float(num_layers) + last_extra, list(weights), low, high)
    shares[-1] -= last_extra
    sizes = [max(1, min(caps[i], math.floor(shares[i] + 1e-9))) for i in range(count)]
    remainder = num_layers - sum(sizes)
    order = sorted(range(count), key=lambda i: (-(shares[i] - math.floor(shares[i] + 1e-9)), -weights[i], i))
    while remainder > 0:
        for i in order:
            if remainder and sizes[i] < caps[i]:
                sizes[i] += 1
                remainder -= 1
    while remainder < 0:  # rounding overshoot, only possible when the lower bound lifted a share
        for i in reversed(order):
            if remainder and sizes[i] > 1:
                sizes[i] -= 1
                remainder += 1
    ranges, start = [], 0
    for size in sizes:
        ranges.append((start, start + size))
        start += size
    return tuple(ranges)


def _water_fill(total: float, weights: list[float], low: list[float], high: list[float]) -> list[float]:
    pinned: dict[int, float] = {}
    while True:
        free = [i for i in range(len(weights)) if i not in pinned]
        left = total - sum(pinned.values())
        weight_sum = sum(weights[i] for i in free)
        shares = {i: left * weights[i] / weight_sum for i in free}
        over = [i for i in free if shares[i] > high[i] + 1e-12]
        under = [i for i in free if shares[i] < low[i] - 1e-12]
        if not over and not under:
            return [pinned[i] if i in pinned else shares[i] for i in range(len(weights))]
        for i in over or under:
            pinned[i] = high[i] if over else low[i]
