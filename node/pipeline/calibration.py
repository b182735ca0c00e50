"""Calibration of the TOPLOC thresholds by measurement: an honest matrix and an attack matrix.

A "worker group" runs a job stage by stage the way the pipeline does (per-stage models, KV-cache decoding,
Gumbel sampling at the last stage) and proves what each stage sends; a validator replays prompt + output
in one prefill of the whole model and checks every stage's proofs and the sampling proof. Each row of a
matrix changes one thing on the worker side:

- honest: 1 or 2 threads, batch 1 or 8 (seven other sequences in the same ragged batch), eager or SDPA
  attention, KV-cache decoding or one prefill — every row must pass, with margin;
- attack: one stage's weights times (1 + 1e-3 noise), a different model of the same shape, a skipped
  layer, one stage computed in fp16 or bf16 where fp32 is declared, a changed prompt token, one stage's
  activations scaled by 1.01 or negated — every row must fail, blaming the stage that did it.

Every row runs in a declared precision (`dtype`: fp32, bf16 or fp16; the worker's stages and the
validator's replay both compute in it, PROTOCOL I8). In the low precisions the honest matrix adds the
emulated GPU kernels of node/pipeline/kernel_variants.py, and the attack matrix the cheaper weights of
node/pipeline/calibration_cheats.py (int4 per group, 2:4 sparsity, low rank; and the *subtle* ones, int8
and fp8 weights, an fp8 or int8 KV cache, whose single chunks sit at the honest floor: those rows carry
`subtle=True` and are judged over whole jobs and across jobs, node/toploc/job_statistics.py), a draft
model's tokens (the sampling proof's) and a changed prompt token.

`run_matrix` returns the raw figures per row and stage; `bench/calibrate_toploc.py` prints them as the
table in docs/verification.md, and tests/toploc run a small version on tiny models.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch

from node.pipeline.calibration_cheats import WeightCheat, cheat_weights
from node.pipeline.kernel_variants import NATIVE, KernelVariant, apply_kernel_variant, gpu_like_variants
from node.pipeline.model import replay
from node.pipeline.weights import load_stage
from node.protocol.job import SamplingParams
from node.toploc.activation import StageProofCheck, build_proofs, split_replay, verify_proofs
from node.toploc.codec import ChunkFigures
from node.toploc.job_statistics import stage_job_check
from node.toploc.sampling import sample_next, verify_sampling
from node.toploc.thresholds import (
    ACTIVATION,
    BF16_ACTIVATION,
    BF16_SAMPLING,
    FP16_ACTIVATION,
    FP16_SAMPLING,
    JOB_THRESHOLDS,
    SAMPLING,
    ActivationThresholds,
    SamplingThresholds,
)

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def declared_thresholds(dtype: torch.dtype) -> tuple[ActivationThresholds, SamplingThresholds]:
    """The per-chunk and sampling thresholds a declared precision is judged with."""
    return {
        torch.float32: (ACTIVATION, SAMPLING),
        torch.bfloat16: (BF16_ACTIVATION, BF16_SAMPLING),
        torch.float16: (FP16_ACTIVATION, FP16_SAMPLING),
    }[dtype]


@dataclass(frozen=True)
class WorkerSetup:
    """How the worker group computes (one change from the honest baseline per row)."""

    name: str
    attack: bool = False
    threads: int = 1
    batch: int = 1
    attn_impl: str = "sdpa"
    one_prefill: bool = False  # recompute what each stage sends in one prefill instead of decode steps
    weight_noise: tuple[int, float] | None = None  # (stage, relative std)
    other_model: bool = False
    skip_layer: tuple[int, int] | None = None  # (stage, layer index within it)
    stage_dtype: tuple[int, torch.dtype] | None = None
    change_prompt: bool = False
    scale_output: tuple[int, float] | None = None  # (stage, factor) applied to what the stage sends
    kernels: KernelVariant = NATIVE  # emulated GPU kernels on every stage
    weight_cheat: tuple[int, WeightCheat] | None = None  # (stage, kind): cheaper weights on that stage
    kv_cheat: tuple[int, str] | None = None  # (stage, "fp8" | "int8"): that stage's KV cache quantized
    draft_tokens: bool = False  # the last stage samples from an early exit after stage 0 (a draft model)
    subtle: bool = False  # below one chunk's resolution: judged per job / across jobs, not per chunk
    blame: int | None = None  # the stage that must be blamed (None: all must pass)


def honest_setups(dtype: torch.dtype = torch.float32) -> list[WorkerSetup]:
    plain = [
        WorkerSetup("baseline: KV-cache decode, batch 1, SDPA, 1 thread"),
        WorkerSetup("2 threads", threads=2),
        WorkerSetup("batch 8 (7 other sequences beside)", batch=8),
        WorkerSetup("eager attention", attn_impl="eager"),
        WorkerSetup("one prefill instead of KV-cache decode, eager", one_prefill=True, attn_impl="eager"),
    ]
    emulated = [WorkerSetup(f"GPU kernels: {variant.name}", kernels=variant) for variant in gpu_like_variants(dtype)]
    if dtype == torch.float32:
        return plain + emulated
    emulated.append(WorkerSetup("GPU kernels: split-K x4 fp32 + flash, batch 4", batch=4, kernels=gpu_like_variants(dtype)[1]))
    return plain + emulated


def attack_setups(num_stages: int, dtype: torch.dtype = torch.float32) -> list[WorkerSetup]:
    middle = num_stages // 2
    last = num_stages - 1
    if dtype != torch.float32:
        return _low_precision_attacks(middle, last)
    return [
        WorkerSetup(f"stage {middle} weights x (1 + 1e-3 noise)", attack=True, weight_noise=(middle, 1e-3), blame=middle),
        WorkerSetup("a different model of the same shape", attack=True, other_model=True, blame=0),
        WorkerSetup(f"stage {middle} skips a layer", attack=True, skip_layer=(middle, 0), blame=middle),
        WorkerSetup(f"stage {middle} in fp16", attack=True, stage_dtype=(middle, torch.float16), blame=middle),
        WorkerSetup(f"stage {middle} in bf16", attack=True, stage_dtype=(middle, torch.bfloat16), blame=middle),
        WorkerSetup("every stage with TF32 matmuls", attack=True, kernels=KernelVariant("TF32", matmul="tf32"), blame=0),
        WorkerSetup("one prompt token changed", attack=True, change_prompt=True, blame=0),
        WorkerSetup(f"stage {middle} activations x 1.01", attack=True, scale_output=(middle, 1.01), blame=middle),
        WorkerSetup(f"stage {last} activations negated", attack=True, scale_output=(last, -1.0), blame=last),
    ]


def _low_precision_attacks(middle: int, last: int) -> list[WorkerSetup]:
    gross = [
        WorkerSetup(f"stage {middle} int4 weights (per group of 64)", attack=True, weight_cheat=(middle, "int4"), blame=middle),
        WorkerSetup(f"stage {middle} 2:4-sparse weights", attack=True, weight_cheat=(middle, "sparse_2_4"), blame=middle),
        WorkerSetup(f"stage {middle} rank-1/4 weights", attack=True, weight_cheat=(middle, "low_rank"), blame=middle),
        WorkerSetup(f"stage {middle} skips a layer", attack=True, skip_layer=(middle, 0), blame=middle),
        WorkerSetup("a different model of the same shape", attack=True, other_model=True, blame=0),
        WorkerSetup("one prompt token changed", attack=True, change_prompt=True, blame=0),
        WorkerSetup(f"stage {last} samples a draft model's tokens", attack=True, draft_tokens=True, blame=last),
    ]
    subtle = [
        WorkerSetup(f"stage {middle} int8 weights (per channel)", attack=True, subtle=True, weight_cheat=(middle, "int8"), blame=middle),
        WorkerSetup(f"stage {middle} fp8 e4m3 weights", attack=True, subtle=True, weight_cheat=(middle, "fp8"), blame=middle),
        WorkerSetup(f"stage {middle} fp8 KV cache", attack=True, subtle=True, kv_cheat=(middle, "fp8"), blame=middle),
        WorkerSetup(f"stage {middle} int8 KV cache", attack=True, subtle=True, kv_cheat=(middle, "int8"), blame=middle),
        WorkerSetup(f"stage {middle} weights x (1 + 1e-3 noise)", attack=True, subtle=True, weight_noise=(middle, 1e-3), blame=middle),
    ]
    return gross + subtle


@dataclass(frozen=True)
class Job:
    prompt: tuple[int, ...]
    new_tokens: int
    params: SamplingParams
    seed: int


@dataclass(frozen=True)
class StageFigures:
    """The worst chunk of one stage, figure by figure, and the stage's verdict."""

    stage: int
    ok: bool
    exp_mismatches: int
    sign_mismatches: int
    mant_err_mean: float
    mant_err_median: float
    chunks: int
    every_chunk: tuple[ChunkFigures, ...] = ()  # all chunks' figures, for job-level and cross-job statistics


@dataclass(frozen=True)
class Row:
    model: str
    setup: WorkerSetup
    stages: tuple[StageFigures, ...]
    blamed: int | None  # first failing stage
    sampling_ok: bool
    logit_drift: float  # max |generation logits - replay logits| over the generated positions
    sampling_worst_gap: float
    dtype: torch.dtype = torch.float32
    position_drifts: tuple[float, ...] = ()  # per generated position: max |generation - replay logits|
    sampling_failures: int = 0  # positions the sampling proof refused

    @property
    def as_expected(self) -> bool:
        """Honest rows pass; gross attacks are blamed on their stage; subtle attacks are not judged per
        chunk, but must not be pinned on another stage."""
        if self.setup.attack and self.setup.subtle:
            return self.blamed in (None, self.setup.blame)
        if self.setup.attack:
            return self.blamed == self.setup.blame
        return self.blamed is None and self.sampling_ok


@dataclass
class _Run:
    sent: list[tuple[torch.Tensor, torch.Tensor]]  # per stage: (prefill [P, H], decode [N-1, H])
    tokens: list[int]
    logits: torch.Tensor  # [N, V] the logits each token was sampled from


@contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_stages(model_dir: Path, layout: Sequence[tuple[int, int]], setup: WorkerSetup, declared: torch.dtype) -> list:
    stages = []
    for index, (start, end) in enumerate(layout):
        dtype = setup.stage_dtype[1] if setup.stage_dtype and setup.stage_dtype[0] == index else declared
        stage = load_stage(model_dir, start, end, attn_impl=setup.attn_impl, dtype=dtype)
        generator = torch.Generator().manual_seed(1000 + index)
        with torch.no_grad():
            if setup.weight_noise and setup.weight_noise[0] == index:
                for parameter in stage.parameters():
                    noise = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
                    parameter.mul_(1 + setup.weight_noise[1] * noise)
            if setup.other_model:  # same shapes and statistics, other values
                for parameter in stage.parameters():
                    mean, std = parameter.float().mean(), parameter.float().std()
                    if not torch.isfinite(std) or parameter.numel() < 2:
                        std = torch.tensor(0.0)
                    fresh = torch.randn(parameter.shape, generator=generator) * std + mean
                    parameter.copy_(fresh.to(parameter.dtype))
        if setup.weight_cheat and setup.weight_cheat[0] == index:
            cheat_weights(stage, setup.weight_cheat[1])
        if setup.skip_layer and setup.skip_layer[0] == index:
            kept = [layer for i, layer in enumerate(stage.layers) if i != setup.skip_layer[1]]
            stage.layers = torch.nn.ModuleList(kept)
        kernels = setup.kernels
        if setup.kv_cheat and setup.kv_cheat[0] == index:
            kernels = replace(kernels, kv_cache=setup.kv_cheat[1])
        stages.append(apply_kernel_variant(stage, kernels))
    return stages


def _other_prompts(job: Job, vocab: int, count: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(job.seed + 77)
    prompts = []
    for i in range(count):
        length = int(torch.randint(2, len(job.prompt) + 6, (1,), generator=generator))
        prompts.append(torch.randint(0, vocab, (length,), generator=generator).tolist())
    return prompts


def run_worker(
    model_dir: Path, layout: Sequence[tuple[int, int]], job: Job, setup: WorkerSetup, dtype: torch.dtype = torch.float32
) -> _Run:
    """Generate the job as a group of stages would, returning what each stage sent for the job."""
    return run_batch(model_dir, layout, job, setup, dtype)[0][1]


def run_batch(
    model_dir: Path, layout: Sequence[tuple[int, int]], job: Job, setup: WorkerSetup, dtype: torch.dtype = torch.float32
) -> list[tuple[Job, _Run]]:
    """Generate the job and the `setup.batch - 1` other sequences beside it in one ragged batch, returning
    every sequence's job and what each stage sent for it (the job itself first)."""
    with _threads(setup.threads):
        stages = _load_stages(model_dir, layout, setup, dtype)
        vocab = stages[0].config.vocab_size
        prompt = list(job.prompt)
        if setup.change_prompt:
            prompt[len(prompt) // 2] = (prompt[len(prompt) // 2] + 1) % vocab
        others = _other_prompts(job, vocab, setup.batch - 1)
        target = len(others) // 2
        prompts = others[:target] + [prompt] + others[target:]
        caches = [[stage.new_cache() for _ in prompts] for stage in stages]
        seeds = [job.seed if i == target else job.seed + 1 + i for i in range(len(prompts))]
        sent_rows: list[list[list[torch.Tensor]]] = [[[] for _ in prompts] for _ in stages]
        tokens: list[list[int]] = [[] for _ in prompts]
        logits_rows: list[list[torch.Tensor]] = [[] for _ in prompts]

        inputs = torch.tensor([t for p in prompts for t in p])
        counts = [len(p) for p in prompts]
        positions = torch.tensor(counts)
        for step in range(job.new_tokens):
            x = inputs
            ends = torch.tensor(counts).cumsum(0) - 1
            for index, stage in enumerate(stages):
                x = stage(x, caches[index], counts)
                if setup.scale_output and setup.scale_output[0] == index:
                    x = x * setup.scale_output[1]
                for i, (start, count) in enumerate(zip((ends - torch.tensor(counts) + 1).tolist(), counts)):
                    sent_rows[index][i].append(x[start : start + count].float())
                if index == 0 and setup.draft_tokens:  # an early exit after stage 0 proposes the tokens
                    with torch.inference_mode():
                        draft = stages[-1].logits(stages[-1].norm(x[ends])).float()
            logits = draft if setup.draft_tokens else stages[-1].logits(x[ends]).float()
            next_tokens = torch.stack(
                [sample_next(logits[i : i + 1], job.params, seeds[i], positions[i : i + 1])[0] for i in range(len(prompts))]
            )
            for i in range(len(prompts)):
                tokens[i].append(int(next_tokens[i]))
                logits_rows[i].append(logits[i])
            inputs, counts, positions = next_tokens, [1] * len(prompts), positions + 1

        order = [target] + [i for i in range(len(prompts)) if i != target]
        results = []
        for i in order:
            # Step 0 is the prefill; steps 1..N-1 fed back tokens 0..N-2 (the last sampled token never is).
            sent = [(rows[i][0], torch.cat(rows[i][1:]) if len(rows[i]) > 1 else rows[i][0][:0]) for rows in sent_rows]
            if setup.one_prefill:
                sent = _one_prefill(stages, prompts[i], tokens[i], setup)
            sequence = job if i == target else Job(tuple(prompts[i]), job.new_tokens, job.params, seeds[i])
            results.append((sequence, _Run(sent=sent, tokens=tokens[i], logits=torch.stack(logits_rows[i]))))
        return results


def _one_prefill(stages, prompt: list[int], tokens: list[int], setup: WorkerSetup):
    x = torch.tensor(prompt + tokens[:-1])
    sent = []
    for index, stage in enumerate(stages):
        x = stage(x, [stage.new_cache()])
        if setup.scale_output and setup.scale_output[0] == index:
            x = x * setup.scale_output[1]
        sent.append((x[: len(prompt)].float(), x[len(prompt) :].float()))
    return sent


def check_row(
    model_name: str,
    model_dir: Path,
    layout: Sequence[tuple[int, int]],
    job: Job,
    setup: WorkerSetup,
    thresholds: ActivationThresholds | None = None,
    margin: float | None = None,
    validator_threads: int = 1,
    dtype: torch.dtype = torch.float32,
) -> Row:
    """One job computed by the worker group as `setup` says, judged as the validator judges it in `dtype`
    (with that precision's thresholds unless others are given)."""
    return check_rows(model_name, model_dir, layout, job, setup, thresholds, margin, validator_threads, dtype)[0]


def check_rows(
    model_name: str,
    model_dir: Path,
    layout: Sequence[tuple[int, int]],
    job: Job,
    setup: WorkerSetup,
    thresholds: ActivationThresholds | None = None,
    margin: float | None = None,
    validator_threads: int = 1,
    dtype: torch.dtype = torch.float32,
    every_sequence: bool = False,
) -> list[Row]:
    """`check_row`, and with `every_sequence` also one row per other sequence of the batch (each an honest
    job of its own, or as much an attack as the stage's computation; a changed prompt is the job's alone)."""
    declared, sampling_thresholds = declared_thresholds(dtype)
    thresholds = declared if thresholds is None else thresholds
    margin = sampling_thresholds.logit_margin if margin is None else margin
    runs = run_batch(model_dir, layout, job, setup, dtype)
    if not every_sequence or setup.change_prompt:
        runs = runs[:1]
    rows = []
    with _threads(validator_threads):
        model = load_stage(model_dir, 0, None, dtype=dtype)
        for sequence, run in runs:
            boundaries, logits = replay(model, list(sequence.prompt) + list(run.tokens[:-1]), [end for _, end in layout])
            rows.append(_judge(model_name, setup, layout, sequence, run, boundaries, logits, thresholds, margin, dtype))
    return rows


def _judge(model_name, setup, layout, job, run, boundaries, logits, thresholds, margin, dtype) -> Row:
    figures, blamed = [], None
    job_thresholds = JOB_THRESHOLDS[next(name for name, d in PRECISIONS.items() if d == dtype)]
    for index, (hidden, (prefill, decode)) in enumerate(zip(boundaries, run.sent)):
        proofs = build_proofs(prefill, decode)
        replay_prefill, replay_decode = split_replay(hidden.float(), len(job.prompt))
        check = verify_proofs(replay_prefill, replay_decode, proofs, thresholds)
        whole_job = stage_job_check(check.chunks, job_thresholds, thresholds.short_rows)  # as the verdict judges it
        figures.append(_worst(index, check, whole_job.ok))
        if blamed is None and not (check.ok and whole_job.ok):
            blamed = index
    prompt_len = len(job.prompt)
    replay_logits = logits[prompt_len - 1 :].float()
    sampling = verify_sampling(replay_logits, run.tokens, job.params, job.seed, prompt_len, margin=margin)
    drifts = (replay_logits - run.logits).abs().amax(-1)
    finite = [g for g in sampling.score_gaps if math.isfinite(g)]
    failures = sum(1 for gap, inside in zip(sampling.score_gaps, sampling.in_filter) if gap > margin or not inside)
    if blamed is None and not sampling.ok:
        blamed = len(layout) - 1
    return Row(
        model_name, setup, tuple(figures), blamed, sampling.ok, float(drifts.max()), max(finite) if finite else 0.0,
        dtype, tuple(drifts.tolist()), failures,
    )


def _worst(stage: int, check: StageProofCheck, job_ok: bool = True) -> StageFigures:
    figures = [c.figures for c in check.chunks if c.figures is not None]
    return StageFigures(
        stage=stage,
        ok=check.ok and job_ok,
        exp_mismatches=max(f.exp_mismatches for f in figures),
        sign_mismatches=max(f.sign_mismatches for f in figures),
        mant_err_mean=max(f.mant_err_mean for f in figures),
        mant_err_median=max(f.mant_err_median for f in figures),
        chunks=len(check.chunks),
        every_chunk=tuple(figures),
    )


def run_matrix(
    model_name: str,
    model_dir: Path,
    layout: Sequence[tuple[int, int]],
    jobs: Job | Sequence[Job],
    setups: Sequence[WorkerSetup],
    progress=None,
    dtype: torch.dtype = torch.float32,
    every_sequence: bool = False,
) -> list[Row]:
    """Every setup on every job: one row per (setup, job), and with `every_sequence` one per other
    sequence of a batch beside it."""
    rows = []
    for setup in setups:
        for job in [jobs] if isinstance(jobs, Job) else jobs:
            rows += check_rows(model_name, model_dir, layout, job, setup, dtype=dtype, every_sequence=every_sequence)
            if progress is not None:
                progress(rows[-1])
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """A markdown table: per row the worst figures over stages (of the blamed stage, for attacks)."""
    lines = [
        "| model | worker setup | kind | blamed stage (expected) | exp mism. | sign mism. | mant. err mean | mant. err median | logit drift | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.setup.attack and row.setup.blame is not None:
            shown = row.stages[row.setup.blame]
            exp, sign, mean, median = shown.exp_mismatches, shown.sign_mismatches, shown.mant_err_mean, shown.mant_err_median
        else:
            exp = max(s.exp_mismatches for s in row.stages)
            sign = max(s.sign_mismatches for s in row.stages)
            mean = max(s.mant_err_mean for s in row.stages)
            median = max(s.mant_err_median for s in row.stages)
        expected = "-" if row.setup.blame is None else str(row.setup.blame)
        blamed = "none" if row.blamed is None else str(row.blamed)
        drift = f"{row.logit_drift:.2e}" if not row.setup.attack else "-"
        if row.setup.attack and row.setup.subtle:
            verdict = ("caught per chunk" if row.blamed is not None else "per job / across jobs") if row.as_expected else "WRONG BLAME"
        elif row.setup.attack:
            verdict = "caught" if row.as_expected else "MISSED"
        else:
            verdict = "pass" if row.as_expected else "FALSE ALARM"
        lines.append(
            f"| {row.model} | {row.setup.name} | {'attack' if row.setup.attack else 'honest'} | {blamed} ({expected}) "
            f"| {exp} | {sign} | {_fmt(mean)} | {_fmt(median)} | {drift} | {verdict} |"
        )
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "no match" if value >= 2**63 else f"{value:.3f}"
