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

bf16 and fp16 (a job's declared precision, PROTOCOL I8) have their own bounds below (BF16_*, FP16_*, and the
job-level JOB_THRESHOLDS), each beside the largest honest and the smallest attack figure it separates; fp32's are
the dataclasses' defaults. The emulated fp32 GPU kernels (node/pipeline/kernel_variants.py: split-K, flash-style
attention) drift 0 in fp32; emulated TF32 matmuls read mantissa mean 0.13-0.23 and are caught, like fp16.

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
class ShortChunkBounds:
    """The bounds of a chunk of fewer than `below_rows` rows (and at least the previous tier's)."""

    below_rows: int
    max_exp_mismatches: int
    max_mant_err_mean: float
    max_mant_err_median: float


@dataclass(frozen=True)
class ActivationThresholds:
    """A chunk passes when every figure is at or below its bound. Counts are per 128 compared entries
    (scaled for the rare smaller chunk).

    A chunk of few rows (a job's last decode chunk, a short prompt) is judged by the first of `short_tiers`
    (ascending `below_rows`) it falls under: its top-128 reaches down to small entries, whose low-precision
    rounding drifts far more than the large ones' (bf16, tiny models, honest worst chunk by rows: 1: mean 25.6,
    2: 17.9, 4: 8.4, 8: 5.2, 15: 4.2; the tiny models are 64 wide, so a 2-row chunk commits to all its entries).
    At most one chunk of a job's decode rows is short, and the prefill when the prompt is."""

    max_exp_mismatches: int = 4
    max_sign_mismatches: int = 2
    max_mant_err_mean: float = 0.05
    max_mant_err_median: float = 0.5
    short_tiers: tuple[ShortChunkBounds, ...] = ()

    def __post_init__(self) -> None:
        if [t.below_rows for t in self.short_tiers] != sorted({t.below_rows for t in self.short_tiers}):
            raise ValueError("short-chunk tiers ascend by below_rows")

    @property
    def short_rows(self) -> int:
        """Chunks of fewer rows are judged by a short-chunk tier (0: none is)."""
        return self.short_tiers[-1].below_rows if self.short_tiers else 0

    def bounds_for(self, rows: int | None) -> tuple[int, float, float]:
        """(exponent mismatches, mantissa mean, median) bounds of a chunk of `rows` rows (None: a full chunk)."""
        tier = next((t for t in self.short_tiers if rows is not None and rows < t.below_rows), None)
        if tier is None:
            return self.max_exp_mismatches, self.max_mant_err_mean, self.max_mant_err_median
        return tier.max_exp_mismatches, tier.max_mant_err_mean, tier.max_mant_err_median

    def chunk_passes(self, figures: _Figures, rows: int | None = None) -> bool:
        scale = figures.points / 128
        exp, mean, median = self.bounds_for(rows)
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

# bf16 (bench/calibrate_toploc.py --precision bf16; docs/verification.md has every row). Honest matrix: 3,432
# chunks on tiny Llama and Qwen2 (104 jobs of 12 + 321 tokens, 4 sequences a batch) plus SmolLM2-135M, worker
# in bf16 with KV-cache decoding, batch 1/4/8, eager/SDPA, 1/2 threads and the emulated GPU kernels
# (node/pipeline/kernel_variants.py), the validator replaying in bf16. Worst full chunk, honest -> threshold
# <- weakest gross attack's worst chunk at the stage it must blame:
#   mantissa mean     3.17 -> 6.0  <- 9.55 (int4 per group of 64, tiny Llama); 2:4 28.0, skip 33.3, rank/4 48.5
#   mantissa median   2    -> 5    <- 8 (int4)
#   exponent / 128    21   -> 40   <- 28 (int4; caught by mean and median), other model 123
#   sign / 128        1    -> 4    <- (negation; not a low-precision attack)
# Short chunks, bounds by row count (honest worst / bound / int4's weakest chunk, mean and median; tiny Llama and
# Qwen2, decode rows sliced into chunks of 1-15 rows plus prefills of 1-15 rows, 11 honest setups and int4 / 2:4 at
# stage 1, 8,448 chunks; an earlier 17,280-chunk run on tiny Llama gave the one- to eight-row tails):
#   1-2 rows   25.6 / 17 (earlier run)  -> 34 / 24   <- int4 16.3 / 11 (passes: the floor), 2:4 26.4 / 18
#   3-4 rows   8.4 / 6 (earlier run)    -> 10.5 / 7  <- int4 12.2 / 9 decode, 8.89 / 7 a 4-row prefill (passes)
#   5-15 rows  5.77 / 5                 -> 6.5 / 6   <- int4 7.47 / 6, 2:4 15.7
# (docs/verification.md, "Short jobs"). The tiny models are 64 wide: their 2-row chunk commits to every entry.
# SmolLM2-135M (576 wide; bench/calibrate_short_chunks.py, 17,136 honest short chunks, 0 failing; int4 / 2:4 at stage 1):
#   1-2 rows   12.1 / 9 (batch 8)         <- int4 9.85 / 8 (inside honest: the floor on this width too), 2:4 19.8
#   3-4 rows   4.33 / 3                   <- int4 8.15 / 6 (20 of 144 tiles pass), 2:4 16.4
#   5-15 rows  5.10 / 3 decode, 4.98 / 5 a 5-row prefill (hence median 6)  <- int4 6.63 / 5 (caught by the mean, thin)
BF16_ACTIVATION = ActivationThresholds(
    max_exp_mismatches=40, max_sign_mismatches=4, max_mant_err_mean=6.0, max_mant_err_median=5.0,
    short_tiers=(
        ShortChunkBounds(below_rows=3, max_exp_mismatches=80, max_mant_err_mean=34.0, max_mant_err_median=24.0),
        ShortChunkBounds(below_rows=5, max_exp_mismatches=60, max_mant_err_mean=10.5, max_mant_err_median=7.0),
        # median 6, not 5: an honest SmolLM2 prefill read 5; int4 there is caught by the mean (6.63 and 7.47 > 6.5)
        ShortChunkBounds(below_rows=16, max_exp_mismatches=40, max_mant_err_mean=6.5, max_mant_err_median=6.0),
    ),
)
# fp16 (bench/calibrate_toploc.py --precision fp16; docs/verification.md, "fp16 declared"). fp16 keeps 3 more mantissa
# bits than bf16, so honest kernel differences rarely move the bf16 fields the proof compares. Honest matrix: 7,092
# chunks, 0 failing (tiny Llama and Qwen2: 208 jobs of 12 + 321 tokens in two runs, 4 sequences a batch; SmolLM2-135M:
# 19 jobs of 40 + 96 tokens), the bf16 matrix's setups and emulated GPU kernels. Worst chunk, honest -> threshold <-
# weakest gross attack's worst chunk at the stage it must blame (every gross attack blamed on it in every job):
#   mantissa mean     0.477 (0.914 in 16-31-row tiles) -> 6.0 <- 8.93 (int4 per group of 64, tiny Llama; SmolLM2 21.3)
#   mantissa median   0 (1 in 16-31-row tiles)         -> 5   <- 7 (int4, tiny Llama)
#   exponent / 128    6                                -> 40  <- 28 (int4; caught by mean and median), other model 122
#   sign / 128        1                                -> 4   <- (negation; not a low-precision attack)
#   short chunks (bf16's tiers; bench/calibrate_short_chunks.py --precision fp16, tiny Llama, 62,244 honest tiles):
#   1-2 rows 6.40 / 3 / 12 -> 34 / 24 / 80 (int4 14.5: the floor stays bf16's); 3-4 rows 1.34 -> 10.5; 5-15 rows 0.92 -> 6.5
# bf16's bounds, kept: they catch every gross attack, and tighter ones blame the wrong stage. At a mean bound of 1.5
# (3x the honest worst) an fp8 or int8 KV cache in SmolLM2's stage 1 reads 1.06 / 0.58 there but 2.57 / 2.03 in
# stage 2, whose figures carry stage 1's drift: stage 2 would be blamed. A bound must sit above what a sub-threshold
# cheat upstream does downstream; the whole-job mean (JOB_THRESHOLDS["fp16"]) is where fp16's narrow honest spread pays.
# Not counted as honest: kernel_variants' RMSNorm computed wholly in fp16 overflows on SmolLM2 (its massive activations
# square past 65,504): stage 0 reads 128 exponent mismatches, logit drift 33. That worker does not compute the model and
# is blamed; with the sum of squares in fp32 (as fused fp16 kernels keep it) the same kernels pass (worst 0.31).
FP16_ACTIVATION = BF16_ACTIVATION
# bf16 sampling margin. Honest drift between the logits a bf16 last stage sampled from and a bf16 replay is
# large (decode rows: max 0.71 tiny, 1.44 SmolLM2; teacher-forced with emulated kernels: p99.9 0.35 tiny, max 2.78
# SmolLM2), but mostly common to all ids: what a token's check sees is the *gap* between its perturbed score and
# the best one, at most 0.42 on SmolLM2 (1,400 teacher-forced positions; 1 gap above 0.25) and under 0.5 on the
# tiny models (0 refused at margin 0.5 over 14,000; at 1.0, 0 of 100,000, gap max 0.18). 1.0 leaves 2.4x over the
# largest honest gap (0 refused in 301,400 positions: <= 1.0e-5 per token at 95 %); the price is the
# per-token bite: an id drawn from the other top-50 candidates passes 59 % (SmolLM2) to 68 % (tiny Llama) of the
# time at 1.0 (8.8 % at 0.5, 96 % at 2.0), so single injected tokens are caught statistically, a run of k of
# them with probability 1 - 0.68^k. docs/verification.md has the positions and the bound reached.
BF16_SAMPLING = SamplingThresholds(logit_margin=1.0)
# fp16 sampling margin. Honest drift between an fp16 last stage's logits and an fp16 replay is far smaller than bf16's
# (teacher-forced, every emulated kernel: p99.9 0.044, max 0.103 tiny; p99.9 0.14, max 0.92 SmolLM2), and the gap a
# token's check sees smaller still: max 0.034 over 400,000 tiny-model positions, 0.026 over 7,000 on SmolLM2. 0.25 is 7x
# the largest honest gap: 0 refused at 0.25 in 307,000 fresh positions (300,000 tiny, 7,000 SmolLM2 with the kernels
# that keep fp32 norms, see FP16_ACTIVATION's note): <= 9.8e-6 per token at 95 %; 0 of the honest matrix's 33,384
# decode positions judged at 0.25 either. The bite is far sharper than bf16's 1.0: an injected top-50 id passes 2.5-2.8 %
# of the time (68 % at 1.0), and a draft model's tokens are refused at 60-64 % of positions (17-19 % at 1.0): every draft
# job is blamed at 0.25 (64 of 64 tiny-model jobs of 34 and 321 tokens), where 1.0 missed one 34-token job.
FP16_SAMPLING = SamplingThresholds(logit_margin=0.25)
# Job level (node/toploc/job_statistics.py): bf16 honest job means (mean over a stage's chunks of their mantissa
# means) reach 2.54 (tiny models, the most drifting kernels; SmolLM2 1.17); gross attacks' jobs >= 7.8; the
# subtle attacks sit under or at the honest spread (docs/verification.md, detection floor).
# fp16: honest job means (full chunks) reach 0.354 (tiny models, fp16 split-K + flash + fp16 norms; SmolLM2 0.206) over
# 227 jobs x 3 stages; 0.5 sits 1.41x above and blames on stage 1 in every measured job (tiny models, 10 full chunks)
# int8 per-channel weights (weakest job mean 0.650), an fp8 KV cache (0.546, 1.09x: thin) and fp8 weights (2.74), which
# bf16 cannot separate; an int8 KV cache (0.131-0.184) and 1e-3 weight noise (0.157-0.205) stay inside honest drift.
# Caveat, measured: stage 2's figures carry stage 1's drift, and SmolLM2 amplifies it 2x by stage 2, so in a 290-token
# SmolLM2 job an int8 KV cache in stage 1 reads job mean 0.500 at stage 1 (passes) and 1.005 at stage 2: stage 2 is
# blamed, and must defend (its replay from the rows it received clears it). Every job-mean bound has such a window
# (a cheat just under it upstream): at the former 3.0, fp8 weights in SmolLM2's stage 1 (1.79 -> 3.23 at stage 2) fell
# in it; 0.5 moves the window down to the weakest cheats and blames the stronger ones where they are.
JOB_THRESHOLDS = {
    "fp32": JobThresholds(max_mant_err_mean=0.05, min_chunks=1),
    "bf16": JobThresholds(max_mant_err_mean=3.0, min_chunks=8),
    "fp16": JobThresholds(max_mant_err_mean=0.5, min_chunks=8),
}


@dataclass(frozen=True)
class PrecisionThresholds:
    """The verdict's bounds for jobs declared in one precision (PROTOCOL I8)."""

    activation: ActivationThresholds
    sampling: SamplingThresholds
    handoff: HandoffThresholds
    job: JobThresholds


# The handoff tolerance in a low precision: rows computed in bf16 differ from a bf16 one-prefill replay by
# far more than fp32's 5e-4 (the bf16 devnet on SmolLM2-135M: honest rows up to 0.019 relative L1, which
# fp32's bound turned into a conviction of the honest first stage when the cheater sat last).
# bench/calibrate_handoff.py --precision bf16 (4 jobs x 70 tokens a model, 658-858 rows): honest worst row
# 0.0188 (tiny Llama), 0.0176 (tiny Qwen2), 0.0299 (SmolLM2-135M); a quiet x0.9 alteration of what the proof
# does not bind, smallest worst row 0.0369, 0.0487, 0.0922. 0.06 sits 2x above the honest worst: it catches a
# 10 % alteration on SmolLM2 (1.5x) but not on the tiny models, and 1 % (0.002-0.004) not at all: bf16's
# detection floor for a handoff alteration is 10-20 %. Below it, the altered rows are taken as the receiver's
# real inputs (the receiver is judged on what it got, never blamed for it). Fewer rows than the activation
# matrix: a wider handoff calibration is still to do.
LOW_PRECISION_HANDOFF = HandoffThresholds(max_row_rel_l1=0.06)
BY_PRECISION: dict[str, PrecisionThresholds] = {
    "fp32": PrecisionThresholds(ACTIVATION, SAMPLING, HANDOFF, JOB_THRESHOLDS["fp32"]),
    "bf16": PrecisionThresholds(BF16_ACTIVATION, BF16_SAMPLING, LOW_PRECISION_HANDOFF, JOB_THRESHOLDS["bf16"]),
    "fp16": PrecisionThresholds(FP16_ACTIVATION, FP16_SAMPLING, LOW_PRECISION_HANDOFF, JOB_THRESHOLDS["fp16"]),
}
assert set(BY_PRECISION) == set(PRECISIONS)


def thresholds_for(precision: str) -> PrecisionThresholds:
    """The activation, sampling, handoff and whole-job thresholds a job declared in `precision` is judged with (KeyError if
    unknown)."""
    return BY_PRECISION[precision]
