"""Every verdict threshold of the TOPLOC checks, in one place, next to the figures they judge.

Measured by `bench/calibrate_toploc.py` (full table: docs/verification.md) on tiny random-init Llama and
Qwen2 models and on SmolLM2-135M, three stages each, fp32 declared, torch 2.13 on CPU. Each chunk proves
the 128 largest |activations| in bf16; the verifier compares bf16 fields at those 128 entries.

Honest matrix (1 vs 2 threads, batch 1 vs 8, eager vs SDPA, KV-cache decoding vs one prefill; 70-token
jobs): the worst chunk of every stage had 0 exponent mismatches, 0 sign mismatches, mantissa error mean 0
and median 0 — fp32 kernel differences (~1e-6 relative) almost never move a bf16 rounding of the largest
entries. The 34-token jobs of `--quick` and the tests saw one flip in a 64-entry chunk (mean 0.016).
Replayed logits differed from the sampled-from ones by at most 1.2e-5 (tiny) and 7.3e-5 (SmolLM2).

Attack matrix, worst chunk of the stage that must be blamed (smallest over the three models):
    weights x (1 + 1e-3 noise)   mean 0.133 (SmolLM2), 0.242, 0.258          median 0
    stage in fp16                mean 0.109 (tiny llama), 0.125, 0.173       median 0
    stage in bf16                mean 0.746 .. 1.023                         median 1
    activations x 1.01           mean ~2.0, 4..6 exponent mismatches        median 2
    one prompt token changed     mean 1.61 (SmolLM2; the massive-activation dimensions dominate its
                                 top-128), 21 and 23 (tiny)
    skipped layer / other model  mean >= 32 / no exponent match at all
    negated activations          128 sign mismatches (0 everything else: the reference accepts these)

Chosen: mantissa error mean <= 0.05 (the weakest attack, fp16 in one stage, is 2.2x above it; the worst
honest chunk seen is 3x below it), median <= 0.5 (i.e. 0), exponent mismatches <= 4 and sign mismatches
<= 2 per 128 entries (room for a top-k boundary swap or two, which reads as a garbage value). Sampling:
`logit_margin` = 1e-3 logit units, 14x the largest honest drift; injected, greedy, other-seed and draft
tokens miss by far more (tests/toploc/test_sampling_proof.py).

Not measured here: a GPU worker against a CPU validator (no GPU on this machine). fp32 GPU kernels differ
from CPU ones by ~1e-6..1e-5 relative, still far below bf16's 4e-3 step, but TF32 matmuls (1e-3) would
fail the mantissa mean exactly as fp16 does: a worker that declares fp32 must compute in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from node.protocol.precision import PRECISIONS


class _Figures(Protocol):
    exp_mismatches: int
    sign_mismatches: int
    mant_err_mean: float
    mant_err_median: float
    points: int


@dataclass(frozen=True)
class ActivationThresholds:
    """A chunk passes when every figure is at or below its bound. Counts are per 128 compared entries
    (scaled for the rare smaller chunk)."""

    max_exp_mismatches: int = 4
    max_sign_mismatches: int = 2
    max_mant_err_mean: float = 0.05
    max_mant_err_median: float = 0.5

    def chunk_passes(self, figures: _Figures) -> bool:
        scale = figures.points / 128
        return (
            figures.exp_mismatches <= self.max_exp_mismatches * scale
            and figures.sign_mismatches <= self.max_sign_mismatches * scale
            and figures.mant_err_mean <= self.max_mant_err_mean
            and figures.mant_err_median <= self.max_mant_err_median
        )


@dataclass(frozen=True)
class SamplingThresholds:
    """How far replayed logits may drift from the ones the last stage sampled from.

    `logit_margin` is in logit units: a claimed token passes when its perturbed score
    `logit/T + G` is within `logit_margin / T` of the best one (temperature 0: its logit within
    `logit_margin` of the largest), and it lies in the top-k / top-p set with the same slack.
    """

    logit_margin: float = 1e-3


@dataclass(frozen=True)
class HandoffThresholds:
    """How far the rows a stage signed and sent may be from the validator's replay of its layers, over every
    entry (the proofs bind only the top-k; a defence compares the rest, PROTOCOL I2). Per row: the sum of
    |sent - replay rounded to the wire dtype| less one wire ulp per entry, over sum |replay|.

    bench/calibrate_handoff.py, tiny Llama, tiny Qwen2, SmolLM2-135M, fp32 and bf16 on the wire, 6,020 honest
    rows: worst 4.9e-5 (bf16 wire; fp32 wire <= 1e-5). Entries the proof does not bind scaled by 0.99: at
    least 1.45e-3 (bf16 wire), 4.1e-3 (fp32). 5e-4 sits 10x above the honest worst and 2.9x below the 1 %
    alteration; 0.1 % (x0.999) is the detection floor (0 with bf16 on the wire, 4e-4..1e-3 with fp32)."""

    max_row_rel_l1: float = 5e-4


ACTIVATION = ActivationThresholds()
SAMPLING = SamplingThresholds()
HANDOFF = HandoffThresholds()


@dataclass(frozen=True)
class PrecisionThresholds:
    """The verdict's bounds for jobs declared in one precision (PROTOCOL I8)."""

    activation: ActivationThresholds
    sampling: SamplingThresholds
    handoff: HandoffThresholds


# PROVISIONAL for bf16 and fp16: set from the figures issue 20 reports and this branch's bf16 devnet, not yet
# from the calibration (bench/calibrate_toploc.py --precision bf16|fp16 measures the honest and attack matrices
# and replaces them). Issue 20: honest bf16 workers decoding with a KV cache, against a bf16 or fp32 prefill
# replay, on SmolLM2-135M and a tiny Llama, worst chunk: exponent mismatches <= 8 / 128, mantissa error mean
# <= 2.37, median <= 1; the gross cheats (int4 per-group and 2:4-sparse weights, low-rank MLPs, a skipped
# layer) read 5-30x higher. The bf16 devnet on SmolLM2-135M (12 honest jobs, 72 chunks, 4 sequences a group
# decoding with a KV cache) read at worst exp 9, mean 2.17, median 2 (the last stage); its int4 per-group
# cheater's mildest chunk exp 26, mean 10.7, median 9. Each bound sits near the geometric middle of the
# honest worst and that mildest cheat. A worker that computes in bf16 while its job declares fp32 still fails
# fp32's bounds (mean 0.75..1.02 against 0.05). fp16 keeps 3 more mantissa bits than bf16, so its honest drift
# in the bf16 fields a proof compares is smaller; until measured it takes bf16's bounds, on the safe side for
# honest workers. Sampling: a bf16 (fp16) last stage computes its logits in bf16 (fp16), whose step near a
# logit of 16 is 0.125 (0.016): the margin is four such steps. Honest gaps seen: 0.0073 (tiny Llama, T=0.8,
# tests/validator/test_precision.py), 0 (the SmolLM2 devnet, greedy).
LOW_PRECISION_ACTIVATION = ActivationThresholds(
    max_exp_mismatches=16, max_sign_mismatches=4, max_mant_err_mean=5.0, max_mant_err_median=4.0
)
# The handoff tolerance in a low precision: rows computed in bf16 differ from a bf16 one-prefill replay by
# far more than fp32's 5e-4 (the bf16 devnet on SmolLM2-135M: honest rows up to 0.019 relative L1, which
# fp32's bound turned into a conviction of the honest first stage when the cheater sat last). PROVISIONAL,
# from bench/calibrate_handoff.py --precision bf16 (4 jobs x 70 tokens a model, 658-858 rows): honest worst
# row 0.0188 (tiny Llama), 0.0176 (tiny Qwen2), 0.0299 (SmolLM2-135M); a quiet x0.9 alteration of what the
# proof does not bind, smallest worst row 0.0369, 0.0487, 0.0922. 0.06 sits 2x above the honest worst: it
# catches a 10 % alteration on SmolLM2 (1.5x) but not on the tiny models, and 1 % (0.002-0.004) not at all:
# bf16's detection floor for a handoff alteration is 10-20 %. Below it, the altered rows are taken as the
# receiver's real inputs (the receiver is judged on what it got, never blamed for it).
LOW_PRECISION_HANDOFF = HandoffThresholds(max_row_rel_l1=0.06)
BY_PRECISION: dict[str, PrecisionThresholds] = {
    "fp32": PrecisionThresholds(ACTIVATION, SAMPLING, HANDOFF),
    "bf16": PrecisionThresholds(LOW_PRECISION_ACTIVATION, SamplingThresholds(logit_margin=0.5), LOW_PRECISION_HANDOFF),
    "fp16": PrecisionThresholds(LOW_PRECISION_ACTIVATION, SamplingThresholds(logit_margin=0.125), LOW_PRECISION_HANDOFF),
}
assert set(BY_PRECISION) == set(PRECISIONS)


def thresholds_for(precision: str) -> PrecisionThresholds:
    """The activation, sampling and handoff thresholds a job declared in `precision` is judged with (KeyError if
    unknown)."""
    return BY_PRECISION[precision]
