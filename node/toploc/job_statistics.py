"""Statistics over more than one chunk: a whole job's figures for one stage, and a sequential test over a
worker's jobs. They exist for the subtle cheats (int8 / fp8 weights, an fp8 KV cache) whose single chunks
sit inside honest drift in the low precisions, but move the *average* of a stage's figures.

- `job_figures(chunks)`: one stage's chunks in one job reduced to the mean of their mantissa-error means
  and the rate of exponent mismatches per compared entry; `job_passes(figures, thresholds)` compares them
  with a `JobThresholds` (node/toploc/thresholds.py) once the job has enough chunks for the mean to settle.
  `stage_job_check(chunks, thresholds, full_rows)` is the verdict's form (node/validator/replay.py): the
  figures over a stage's full chunks only (a short chunk's honest drift is several times a full one's and
  would lift an honest job's mean; short chunks have their own per-chunk bounds).
- `SequentialTest` + `sequential_step`: Wald's sequential probability ratio test on the per-job means of
  one (worker, stage), Gaussian model: honest mean `honest_mean` against a cheating `cheat_mean`, per-chunk
  spread `chunk_sd`. Each job adds its log-likelihood ratio; crossing `upper` flags the stage (false-alarm
  probability per decision <= alpha / (1 - beta), Wald's bound), falling under `lower` clears it and the
  test restarts (so a long honest history never builds credit a later cheat can spend).
- `drift_step`: one accepted job's update of every stage's test, and whom it blames. A stage's figures also
  carry the drift of every stage before it (the validator replays from tokens, not from what the stage
  received), so only a stage judged on figures of its own (stage 0, or replayed from the rows it received)
  adds to its test; `leans_to_cheat` tells the validator which stages to ask for their rows.
  `SEQUENTIAL_TESTS` holds the test of each precision that has one.

All pure functions on small frozen values: the caller (the validator's verdict, or a bench) keeps the state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection, Protocol, Sequence

from node.toploc.thresholds import JobThresholds


class _ChunkFigures(Protocol):
    exp_mismatches: int
    mant_err_mean: float
    points: int


NO_MATCH = float(2**63)  # a chunk whose exponents all differ reports 2**64; it counts as this large


@dataclass(frozen=True)
class JobFigures:
    """One stage's figures over one job's chunks."""

    chunks: int
    mant_err_mean: float  # mean over chunks of each chunk's mantissa-error mean
    exp_rate: float  # exponent mismatches per compared entry, over every chunk


def job_figures(chunks: Sequence[_ChunkFigures]) -> JobFigures:
    if not chunks:
        raise ValueError("a job has at least one chunk")
    means = [min(c.mant_err_mean, NO_MATCH) for c in chunks]
    points = sum(c.points for c in chunks)
    return JobFigures(len(chunks), sum(means) / len(means), sum(c.exp_mismatches for c in chunks) / max(points, 1))


def job_passes(figures: JobFigures, thresholds: JobThresholds) -> bool:
    return figures.chunks < thresholds.min_chunks or figures.mant_err_mean <= thresholds.max_mant_err_mean


class _CheckedChunk(Protocol):
    rows: tuple[int, int]
    figures: _ChunkFigures | None


@dataclass(frozen=True)
class StageJobCheck:
    """A stage's whole-job check: whether it held, and the figures over its full chunks (None when it has none,
    or too few to judge: then it holds)."""

    ok: bool
    figures: JobFigures | None
    thresholds: JobThresholds


def stage_job_check(chunks: Sequence[_CheckedChunk], thresholds: JobThresholds, full_rows: int) -> StageJobCheck:
    """Judge one stage's chunk checks (node/toploc/activation.py's ChunkCheck) over the whole job: the chunks of at
    least `full_rows` rows whose proofs could be read count."""
    counted = [c.figures for c in chunks if c.figures is not None and c.rows[1] - c.rows[0] >= full_rows]
    if not counted:
        return StageJobCheck(True, None, thresholds)
    figures = job_figures(counted)
    return StageJobCheck(job_passes(figures, thresholds), figures, thresholds)


@dataclass(frozen=True)
class SequentialTest:
    """Wald's SPRT on per-job means: H0 chunks ~ N(honest_mean, chunk_sd), H1 ~ N(cheat_mean, chunk_sd)."""

    honest_mean: float
    cheat_mean: float
    chunk_sd: float
    alpha: float = 1e-4  # false alarms per decision (honest stage flagged)
    beta: float = 1e-2  # misses per decision (cheating stage cleared)
    max_chunks: int = 16  # the most chunks one job counts
    max_mean: float = 100.0  # the largest job mean counted

    def __post_init__(self) -> None:
        if not (self.cheat_mean > self.honest_mean and self.chunk_sd > 0 and 0 < self.alpha < 1 and 0 < self.beta < 1):
            raise ValueError("need cheat_mean > honest_mean, chunk_sd > 0 and alpha, beta in (0, 1)")

    @property
    def upper(self) -> float:
        return math.log((1 - self.beta) / self.alpha)

    @property
    def lower(self) -> float:
        return math.log(self.beta / (1 - self.alpha))

    @property
    def false_alarm_bound(self) -> float:
        """Wald: P(flag | honest) <= alpha / (1 - beta) per decision."""
        return self.alpha / (1 - self.beta)

    def log_ratio(self, figures: JobFigures) -> float:
        """log L(H1) / L(H0) of a job whose `chunks` chunks average `mant_err_mean`. A job counts at most
        `max_chunks` chunks: drift common to a whole job (its prompt, its length) does not average out over its
        chunks, and the calibration measured jobs of ~11; a job's mean counts at most `max_mean` (a chunk without
        any exponent match reads 2**64)."""
        shift = self.cheat_mean - self.honest_mean
        middle = (self.cheat_mean + self.honest_mean) / 2
        chunks = min(figures.chunks, self.max_chunks)
        return chunks * shift * (min(figures.mant_err_mean, self.max_mean) - middle) / self.chunk_sd**2

    def chunks_needed(self) -> float:
        """Expected chunks to reach a decision against a cheat at `cheat_mean` (Wald's average sample number)."""
        per_chunk = (self.cheat_mean - self.honest_mean) ** 2 / (2 * self.chunk_sd**2)
        return (self.beta * self.lower + (1 - self.beta) * self.upper) / per_chunk


@dataclass(frozen=True)
class SequentialState:
    """A (worker, stage)'s running test: the log-likelihood ratio since the last restart, and how many jobs
    it holds."""

    log_ratio: float = 0.0
    jobs: int = 0


def sequential_step(test: SequentialTest, state: SequentialState, figures: JobFigures) -> tuple[SequentialState, str]:
    """Add one job: returns the new state and "flag" (the stage's figures drift: blame it), "clear" (the
    test restarts from zero) or "continue"."""
    total = state.log_ratio + test.log_ratio(figures)
    if total >= test.upper:
        return SequentialState(), "flag"
    if total <= test.lower:
        return SequentialState(), "clear"
    return SequentialState(total, state.jobs + 1), "continue"


@dataclass(frozen=True)
class DriftStep:
    """One accepted job's update of its stages' running tests: each stage's new state, what was decided for it,
    and the stage to blame (None: nobody). Decisions: "flag" (blamed; its test restarts), "clear", "continue",
    "inherited" (its figures may carry an earlier stage's drift: they do not count, its state is unchanged),
    "none" (no full chunks: nothing to add)."""

    states: tuple[SequentialState, ...]
    decisions: tuple[str, ...]
    blamed: int | None


def drift_step(test: SequentialTest, states: Sequence[SequentialState], figures: Sequence[JobFigures | None],
               judged: Collection[int] = (0,)) -> DriftStep:
    """Add one job to the running test of each of its stages' workers (`states`, `figures`: one per stage in
    pipeline order) and decide whom to blame.

    A stage's figures carry the drift of every stage before it (the replay starts from the tokens), and a model may
    amplify it (SmolLM2 doubles stage 1's drift by stage 2). Only the stages in `judged` add to their tests: stage 0
    (it starts from the tokens), a stage replayed from the rows it received, and a stage that was asked for them
    and did not hand them in (judged on the figures the validator has). The others' states do not move, so drift a
    stage inherits never builds up in its test. The first stage to cross the upper boundary is blamed."""
    if len(states) != len(figures):
        raise ValueError("one state and one figure (or None) per stage")
    new_states: list[SequentialState] = []
    decisions: list[str] = []
    blamed: int | None = None
    for stage, (state, job) in enumerate(zip(states, figures)):
        if job is None or stage not in judged:
            new_states.append(state)
            decisions.append("none" if job is None else "inherited")
            continue
        state, decision = sequential_step(test, state, job)
        if decision == "flag" and blamed is None:
            blamed = stage
        elif decision == "flag":  # a second crossing in one job: judged on the next one
            state, decision = SequentialState(test.upper, state.jobs), "continue"
        new_states.append(state)
        decisions.append(decision)
    return DriftStep(tuple(new_states), tuple(decisions), blamed)


def leans_to_cheat(test: SequentialTest, state: SequentialState, figures: JobFigures | None) -> bool:
    """Would this job's figures, added to the stage's test, lean it towards a cheat? The validator then asks the
    stage for the rows it received, so that its figures are its own (node/validator/drift.py)."""
    return figures is not None and state.log_ratio + test.log_ratio(figures) > 0


# bf16, from bench/calibrate_toploc.py --precision bf16 (docs/verification.md): the worst honest kernel's job mean
# at any stage was 2.54 (tiny Llama / Qwen2; per-chunk sd 0.55-0.57), fp8 e4m3 weights' weakest job 2.89. H0 at
# 2.6 sits above every honest kernel measured; H1 at 2.9 is fp8. Expected chunks to flag fp8:
# BF16_SEQUENTIAL.chunks_needed() = 72.5 (about 2,300 decode tokens of one stage); false alarms <= 1.01e-4 per
# decision while honest chunk means stay <= 2.6 on average.
BF16_SEQUENTIAL = SequentialTest(honest_mean=2.6, cheat_mean=2.9, chunk_sd=0.6, alpha=1e-4, beta=1e-2)
# fp16 (bench/calibrate_toploc.py --precision fp16 dumps, tiny Llama and Qwen2, 12 honest setups, 8-16 jobs of 10 full
# chunks each): honest job means average <= 0.33 per setup and stage (largest single job 0.354), their job-to-job
# spread a per-chunk sd <= 0.09. H0 0.36 sits above every setup's average; H1 0.45 is under the whole-job bound of 0.5
# (JOB_THRESHOLDS["fp16"]), so a cheat whose jobs straddle the bound (SmolLM2's stage-1 int8 KV cache: 0.500) is
# flagged across jobs when single jobs pass. chunks_needed() = 22.4 (~2-3 jobs); resampling the honest jobs, 0 flags
# in 100,000 jobs per setup; a stage-1 cheat at 0.50 flagged after a median 2 jobs (p99 4), never at another stage.
FP16_SEQUENTIAL = SequentialTest(honest_mean=0.36, cheat_mean=0.45, chunk_sd=0.1, alpha=1e-4, beta=1e-2)
SEQUENTIAL_TESTS: dict[str, SequentialTest] = {"bf16": BF16_SEQUENTIAL, "fp16": FP16_SEQUENTIAL}
