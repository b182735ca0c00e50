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


class _Figures(Protocol):
    exp_mismatches: int
    sign_mismatches: int
    mant_err_mean: float
    mant_err_median: float
    points: int


@dataclass(frozen=True)
class ActivationThresholds:
    """A chunk passes when every figure is at or below its bound. Counts are per 128 compared entries
    (scaled for the rare smaller chunk).

    A chunk of fewer than `short_rows` rows (a job's last decode chunk, a short prompt) is judged by the
    `short_*` bounds instead: its top-128 reaches down to small entries, whose low-precision rounding
    drifts far more than the large ones' (bf16, tiny Llama, honest worst chunk by rows: 1: mean 25.6,
    2: 17.9, 4: 8.4, 8: 5.2, 32: 3.1). At most one chunk of a job's decode rows is short."""

    max_exp_mismatches: int = 4
    max_sign_mismatches: int = 2
    max_mant_err_mean: float = 0.05
    max_mant_err_median: float = 0.5
    short_rows: int = 0
    short_max_exp_mismatches: int = 128
    short_max_mant_err_mean: float = float("inf")
    short_max_mant_err_median: float = float("inf")

    def chunk_passes(self, figures: _Figures, rows: int | None = None) -> bool:
        scale = figures.points / 128
        short = rows is not None and rows < self.short_rows
        exp = self.short_max_exp_mismatches if short else self.max_exp_mismatches
        mean = self.short_max_mant_err_mean if short else self.max_mant_err_mean
        median = self.short_max_mant_err_median if short else self.max_mant_err_median
        return (
            figures.exp_mismatches <= exp * scale
            and figures.sign_mismatches <= self.max_sign_mismatches * scale
            and figures.mant_err_mean <= mean
            and figures.mant_err_median <= median
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


@dataclass(frozen=True)
class JobThresholds:
    """A stage's whole job passes when the mean over its chunks of their mantissa-error means is at or below
    `max_mant_err_mean`; jobs with fewer than `min_chunks` chunks are not judged this way (their mean has not
    settled). node/toploc/job_statistics.py computes the figure."""

    max_mant_err_mean: float
    min_chunks: int


ACTIVATION = ActivationThresholds()
SAMPLING = SamplingThresholds()
HANDOFF = HandoffThresholds()

BF16_ACTIVATION = ActivationThresholds(
    max_exp_mismatches=32, max_sign_mismatches=4, max_mant_err_mean=8.0, max_mant_err_median=6.0,
    short_rows=8, short_max_exp_mismatches=80, short_max_mant_err_mean=34.0, short_max_mant_err_median=24.0,
)
FP16_ACTIVATION = BF16_ACTIVATION
BF16_SAMPLING = SamplingThresholds(logit_margin=3.0)
FP16_SAMPLING = SamplingThresholds(logit_margin=0.5)
JOB_THRESHOLDS = {
    "fp32": JobThresholds(max_mant_err_mean=0.05, min_chunks=1),
    "bf16": JobThresholds(max_mant_err_mean=3.0, min_chunks=8),
    "fp16": JobThresholds(max_mant_err_mean=3.0, min_chunks=8),
}
