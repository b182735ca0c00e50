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

`run_matrix` returns the raw figures per row and stage; `bench/calibrate_toploc.py` prints them as the
table in docs/verification.md, and tests/toploc run a small version on tiny models.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from node.pipeline.model import replay
from node.pipeline.weights import load_stage
from node.protocol.job import SamplingParams
from node.toploc.activation import StageProofCheck, build_proofs, split_replay, verify_proofs
from node.toploc.sampling import sample_next, verify_sampling
from node.toploc.thresholds import ACTIVATION, ActivationThresholds


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
    blame: int | None = None  # the stage that must be blamed (None: all must pass)


def honest_setups() -> list[WorkerSetup]:
    return [
        WorkerSetup("baseline: KV-cache decode, batch 1, SDPA, 1 thread"),
        WorkerSetup("2 threads", threads=2),
        WorkerSetup("batch 8 (7 other sequences beside)", batch=8),
        WorkerSetup("eager attention", attn_impl="eager"),
        WorkerSetup("one prefill instead of KV-cache decode, eager", one_prefill=True, attn_impl="eager"),
    ]


def attack_setups(num_stages: int) -> list[WorkerSetup]:
    middle = num_stages // 2
    last = num_stages - 1
    return [
        WorkerSetup(f"stage {middle} weights x (1 + 1e-3 noise)", attack=True, weight_noise=(middle, 1e-3), blame=middle),
        WorkerSetup("a different model of the same shape", attack=True, other_model=True, blame=0),
        WorkerSetup(f"stage {middle} skips a layer", attack=True, skip_layer=(middle, 0), blame=middle),
        WorkerSetup(f"stage {middle} in fp16", attack=True, stage_dtype=(middle, torch.float16), blame=middle),
        WorkerSetup(f"stage {middle} in bf16", attack=True, stage_dtype=(middle, torch.bfloat16), blame=middle),
        WorkerSetup("one prompt token changed", attack=True, change_prompt=True, blame=0),
        WorkerSetup(f"stage {middle} activations x 1.01", attack=True, scale_output=(middle, 1.01), blame=middle),
        WorkerSetup(f"stage {last} activations negated", attack=True, scale_output=(last, -1.0), blame=last),
    ]


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


@dataclass(frozen=True)
class Row:
    model: str
    setup: WorkerSetup
    stages: tuple[StageFigures, ...]
    blamed: int | None  # first failing stage
    sampling_ok: bool
    logit_drift: float  # max |generation logits - replay logits| over the generated positions
    sampling_worst_gap: float

    @property
    def as_expected(self) -> bool:
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


def _load_stages(model_dir: Path, layout: Sequence[tuple[int, int]], setup: WorkerSetup) -> list:
    stages = []
    for index, (start, end) in enumerate(layout):
        dtype = setup.stage_dtype[1] if setup.stage_dtype and setup.stage_dtype[0] == index else torch.float32
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
        if setup.skip_layer and setup.skip_layer[0] == index:
            kept = [layer for i, layer in enumerate(stage.layers) if i != setup.skip_layer[1]]
            stage.layers = torch.nn.ModuleList(kept)
        stages.append(stage)
    return stages


def _other_prompts(job: Job, vocab: int, count: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(job.seed + 77)
    prompts = []
    for i in range(count):
        length = int(torch.randint(2, len(job.prompt) + 6, (1,), generator=generator))
        prompts.append(torch.randint(0, vocab, (length,), generator=generator).tolist())
    return prompts


def run_worker(model_dir: Path, layout: Sequence[tuple[int, int]], job: Job, setup: WorkerSetup) -> _Run:
    """Generate the job as a group of stages would, returning what each stage sent for the job."""
    with _threads(setup.threads):
        stages = _load_stages(model_dir, layout, setup)
        vocab = stages[0].config.vocab_size
        prompt = list(job.prompt)
        if setup.change_prompt:
            prompt[len(prompt) // 2] = (prompt[len(prompt) // 2] + 1) % vocab
        others = _other_prompts(job, vocab, setup.batch - 1)
        target = len(others) // 2
        prompts = others[:target] + [prompt] + others[target:]
        caches = [[stage.new_cache() for _ in prompts] for stage in stages]
        seeds = [job.seed if i == target else job.seed + 1 + i for i in range(len(prompts))]
        sent_rows: list[list[torch.Tensor]] = [[] for _ in stages]
        tokens: list[int] = []
        logits_rows: list[torch.Tensor] = []

        inputs = torch.tensor([t for p in prompts for t in p])
        counts = [len(p) for p in prompts]
        positions = torch.tensor(counts)
        for step in range(job.new_tokens):
            x = inputs
            for index, stage in enumerate(stages):
                x = stage(x, caches[index], counts)
                if setup.scale_output and setup.scale_output[0] == index:
                    x = x * setup.scale_output[1]
                start = sum(counts[:target])
                sent_rows[index].append(x[start : start + counts[target]].float())
            ends = torch.tensor(counts).cumsum(0) - 1
            logits = stages[-1].logits(x[ends]).float()
            next_tokens = torch.stack(
                [sample_next(logits[i : i + 1], job.params, seeds[i], positions[i : i + 1])[0] for i in range(len(prompts))]
            )
            tokens.append(int(next_tokens[target]))
            logits_rows.append(logits[target])
            inputs, counts, positions = next_tokens, [1] * len(prompts), positions + 1

        # Step 0 is the prefill; steps 1..N-1 fed back tokens 0..N-2 (the last sampled token never is).
        sent = [(rows[0], torch.cat(rows[1:]) if len(rows) > 1 else rows[0][:0]) for rows in sent_rows]
        if setup.one_prefill:
            sent = _one_prefill(stages, job, prompt, tokens, setup)
        return _Run(sent=sent, tokens=tokens, logits=torch.stack(logits_rows))


def _one_prefill(stages, job: Job, prompt: list[int], tokens: list[int], setup: WorkerSetup):
    x = torch.tensor(prompt + tokens[:-1])
    sent = []
    for index, stage in enumerate(stages):
        x = stage(x, [stage.new_cache()])
        if setup.scale_output and setup.scale_output[0] == index:
            x = x * setup.scale_output[1]
        sent.append((x[: len(prompt)].float(), x[len(prompt) :].float()))
    return sent


def replay_job(model_dir: Path, layout: Sequence[tuple[int, int]], job: Job, tokens: Sequence[int], threads: int = 1):
    """The validator's side: one prefill of the whole model over prompt + output[:-1]."""
    with _threads(threads):
        model = load_stage(model_dir, 0, None)
        boundaries, logits = replay(model, list(job.prompt) + list(tokens[:-1]), [end for _, end in layout])
    return boundaries, logits


def check_row(
    model_name: str,
    model_dir: Path,
    layout: Sequence[tuple[int, int]],
    job: Job,
    setup: WorkerSetup,
    thresholds: ActivationThresholds = ACTIVATION,
    margin: float | None = None,
    validator_threads: int = 1,
) -> Row:
    run = run_worker(model_dir, layout, job, setup)
    boundaries, logits = replay_job(model_dir, layout, job, run.tokens, threads=validator_threads)
    figures, blamed = [], None
    for index, (hidden, (prefill, decode)) in enumerate(zip(boundaries, run.sent)):
        proofs = build_proofs(prefill, decode)
        replay_prefill, replay_decode = split_replay(hidden, len(job.prompt))
        check = verify_proofs(replay_prefill, replay_decode, proofs, thresholds)
        figures.append(_worst(index, check))
        if blamed is None and not check.ok:
            blamed = index
    prompt_len = len(job.prompt)
    replay_logits = logits[prompt_len - 1 :]
    sampling = verify_sampling(replay_logits, run.tokens, job.params, job.seed, prompt_len, margin=margin)
    drift = float((replay_logits - run.logits).abs().max())
    finite = [g for g in sampling.score_gaps if math.isfinite(g)]
    return Row(model_name, setup, tuple(figures), blamed, sampling.ok, drift, max(finite) if finite else 0.0)


def _worst(stage: int, check: StageProofCheck) -> StageFigures:
    figures = [c.figures for c in check.chunks if c.figures is not None]
    return StageFigures(
        stage=stage,
        ok=check.ok,
        exp_mismatches=max(f.exp_mismatches for f in figures),
        sign_mismatches=max(f.sign_mismatches for f in figures),
        mant_err_mean=max(f.mant_err_mean for f in figures),
        mant_err_median=max(f.mant_err_median for f in figures),
        chunks=len(check.chunks),
    )


def run_matrix(
    model_name: str,
    model_dir: Path,
    layout: Sequence[tuple[int, int]],
    job: Job,
    setups: Sequence[WorkerSetup],
    progress=None,
) -> list[Row]:
    rows = []
    for setup in setups:
        rows.append(check_row(model_name, model_dir, layout, job, setup))
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
        verdict = ("caught" if row.as_expected else "MISSED") if row.setup.attack else ("pass" if row.as_expected else "FALSE ALARM")
        lines.append(
            f"| {row.model} | {row.setup.name} | {'attack' if row.setup.attack else 'honest'} | {blamed} ({expected}) "
            f"| {exp} | {sign} | {_fmt(mean)} | {_fmt(median)} | {drift} | {verdict} |"
        )
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "no match" if value >= 2**63 else f"{value:.3f}"
