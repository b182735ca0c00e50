"""The sampling margin's calibration: honest logit drift in a declared precision, over many positions.

A decode loop gives one sampled position per step; the margin needs >= 100,000 honest positions to bound a
per-token false-positive rate near 1e-5. So this measures the drift teacher-forced: a long random token
sequence through the whole model once with an honest worker's kernels (every emulated GPU variant of
node/pipeline/kernel_variants.py, eager and SDPA attention) and once as the validator replays it (native,
SDPA); at every position the worker's logits pick a token with the job's Gumbel sampling, and the
validator's sampling check judges it with the declared precision's margin. The KV-cache decode drift is
measured on the calibration matrix's decode rows (`Row.position_drifts`), and is no larger.

The same positions measure the margin's bite: a token drawn uniformly from the other top-k candidates in
place of the sampled one (an injected token) passes only when its perturbed score lies within the margin
of the best, and the fraction that pass is reported beside the false-positive count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from node.pipeline.calibration import declared_thresholds
from node.pipeline.kernel_variants import KernelVariant, apply_kernel_variant, gpu_like_variants
from node.pipeline.weights import load_stage
from node.protocol.job import SamplingParams
from node.toploc.sampling import sample_next, verify_sampling


def _full_logits(model_dir: Path, tokens: torch.Tensor, dtype: torch.dtype, variant: KernelVariant, attn: str) -> torch.Tensor:
    model = apply_kernel_variant(load_stage(model_dir, 0, None, attn_impl=attn, dtype=dtype), variant)
    with torch.inference_mode():
        hidden = model(tokens, [model.new_cache()])
        return model.logits(hidden).float()


def sequence_drift(
    model_dir: Path, dtype: torch.dtype, params: SamplingParams, length: int, seed: int, variant: KernelVariant,
    attn: str, margin: float,
) -> dict:
    """One teacher-forced sequence: per-position drift, honest refusals and injected-token passes."""
    generator = torch.Generator().manual_seed(seed)
    vocab = load_stage(model_dir, 0, 1).config.vocab_size
    tokens = torch.randint(0, vocab, (length,), generator=generator)
    worker = _full_logits(model_dir, tokens, dtype, variant, attn)
    validator = _full_logits(model_dir, tokens, dtype, KernelVariant(), "sdpa")
    positions = torch.arange(length)
    claimed = sample_next(worker, params, seed, positions)
    honest = verify_sampling(validator, claimed, params, seed, 0, margin=margin)
    refused = sum(1 for gap, inside in zip(honest.score_gaps, honest.in_filter) if gap > margin or not inside)
    top = validator.topk(max(params.top_k, 2), dim=-1).indices
    pick = torch.randint(1, top.shape[1], (length,), generator=generator)
    injected = top[positions, pick]
    injected = torch.where(injected == claimed, top[:, 0], injected)
    attack = verify_sampling(validator, injected, params, seed, 0, margin=margin)
    passed = sum(
        1 for gap, inside, a, b in zip(attack.score_gaps, attack.in_filter, injected, claimed)
        if gap <= margin and inside and int(a) != int(b)
    )
    return {
        "drifts": (validator - worker).abs().amax(-1),
        "gaps": torch.tensor([g for g in honest.score_gaps]),
        "refused": refused,
        "injected_passed": passed,
        "positions": length,
    }


def sampling_drift(
    selected: Sequence[tuple[str, Path, list, list]], dtype: torch.dtype, params: SamplingParams, positions: int,
    work: Path, first_seed: int = 100,
) -> tuple[str, int]:
    """A markdown report of the honest drift over `positions` positions shared among the selected models
    and the honest kernel variants, and the count of honest positions the margin refused. Sequence i is drawn
    from seed `first_seed + i`: another `first_seed` measures fresh positions."""
    margin = declared_thresholds(dtype)[1].logit_margin
    variants = [(KernelVariant(), "eager"), *[(v, "sdpa") for v in gpu_like_variants(dtype)]]
    tiny = [entry for entry in selected if entry[0].startswith("tiny")] or list(selected)
    length = 1000
    per_model = max(1, positions // len(tiny))
    lines = [
        "| model | positions | drift p50 / p99.9 / max | honest gap max | refused at margin | injected top-k tokens passing |",
        "|---|---|---|---|---|---|",
    ]
    total_refused = total = 0
    for name, directory, _, _ in tiny:
        results = []
        count, seed = 0, 0
        while count < per_model:
            variant, attn = variants[seed % len(variants)]
            results.append(sequence_drift(directory, dtype, params, min(length, per_model - count), first_seed + seed, variant, attn, margin))
            count += results[-1]["positions"]
            seed += 1
        drifts = torch.cat([r["drifts"] for r in results])
        gaps = torch.cat([r["gaps"] for r in results])
        refused = sum(r["refused"] for r in results)
        passed = sum(r["injected_passed"] for r in results)
        finite = gaps[gaps.isfinite()]
        q = torch.quantile(drifts.double(), torch.tensor([0.5, 0.999], dtype=torch.float64)).tolist()
        lines.append(
            f"| {name} | {count} | {q[0]:.3g} / {q[1]:.3g} / {float(drifts.max()):.3g} | {float(finite.max()) if finite.numel() else float('nan'):.3g} "
            f"| {refused} | {passed} ({passed / count:.1%}) |"
        )
        total_refused += refused
        total += count
    lines.append(
        f"\nMargin {margin:g} logit units; {total} honest positions, {total_refused} refused: per-token false-positive "
        + (f"rate <= {3 / total:.1e} at 95 % (3/N)." if not total_refused else f"rate {total_refused / total:.1e} measured.")
    )
    return "\n".join(lines), total_refused
