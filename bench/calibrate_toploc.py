"""Calibrate the TOPLOC thresholds: run the honest and attack matrices and print the measured figures.

    .venv/bin/python bench/calibrate_toploc.py                          # fp32: tiny Llama, tiny Qwen2, SmolLM2-135M
    .venv/bin/python bench/calibrate_toploc.py --precision bf16         # bf16: long jobs, emulated GPU kernels
    .venv/bin/python bench/calibrate_toploc.py --quick [--precision bf16]   # tiny models, short jobs
    .venv/bin/python bench/calibrate_toploc.py --write docs/verification.md
    .venv/bin/python bench/calibrate_toploc.py --precision bf16 --honest-only --first-job 10   # fresh honest jobs to add to a count

Each row runs one job through a three-stage worker group computed one way (node/pipeline/calibration.py) and
checks it as the validator does, in the declared precision: every stage's activation proofs against a
one-prefill replay of the whole model, then the sampling proof. Figures are the worst chunk of a stage (of the
stage that must be blamed, for attacks; of all stages, for honest rows); "logit drift" is the largest
difference between the logits the last stage sampled from and the replayed ones. The summary puts the largest
honest figure, the threshold in force (node/toploc/thresholds.py) and the smallest gross-attack figure side by
side; in bf16 / fp16 it adds the job-level figures of the subtle attacks (node/toploc/job_statistics.py),
the false-positive bound over every honest chunk (0 failures in N chunks: 3/N at 95 %), and the sampling
margin's honest drift over --sampling-positions teacher-forced positions per precision.

Exits 1 when an honest row fails (a false alarm), a gross attack is not blamed on the stage that did it, a
subtle attack is blamed on another stage, or an honest sampled position is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from node.pipeline.calibration import (  # noqa: E402
    PRECISIONS,
    Job,
    Row,
    attack_setups,
    declared_thresholds,
    format_table,
    honest_setups,
    run_matrix,
)
from node.pipeline.calibration_drift import sampling_drift  # noqa: E402
from node.protocol.job import SamplingParams  # noqa: E402
from node.toploc.job_statistics import job_figures  # noqa: E402
from node.toploc.thresholds import JOB_THRESHOLDS  # noqa: E402

PARAMS = SamplingParams(temperature=0.8, top_k=50, top_p=0.95)


def models(args, work: Path) -> list[tuple[str, Path, list[tuple[int, int]], list[Job]]]:
    from node.pipeline.tiny import tiny_model_dir

    wanted = set(args.models.split(","))
    low = args.precision != "fp32"
    new_tokens = args.new_tokens or (34 if args.quick else (1000 if low else 70))
    jobs = args.jobs or (1 if args.quick or not low else 2)
    tiny_jobs = [
        Job(prompt=tuple(range(3 + j, 3 + j + (8 if args.quick else 12))), new_tokens=new_tokens, params=PARAMS, seed=7 + j)
        for j in range(args.first_job, args.first_job + jobs)
    ]
    chosen = []
    for arch in ("llama", "qwen2"):
        if f"tiny-{arch}" in wanted:
            chosen.append((f"tiny {arch}", tiny_model_dir(arch, 0, work / f"tiny-{arch}"), [(0, 2), (2, 4), (4, 6)], tiny_jobs))
    if "smollm2" in wanted and not args.quick:
        from node.pipeline.smollm2 import chat_prompt_ids, load_tokenizer, smollm2_dir

        directory = smollm2_dir()
        prompt = chat_prompt_ids(load_tokenizer(directory), "Explain in two sentences why the sky is blue.")
        job = Job(prompt=tuple(prompt), new_tokens=args.smollm2_tokens or (200 if low else 70), params=PARAMS, seed=7)
        chosen.append(("SmolLM2-135M", directory, [(0, 10), (10, 20), (20, 30)], [job]))
    return chosen


FIGURES = (
    ("exponent mismatches / 128", "exp_mismatches", "max_exp_mismatches"),
    ("sign mismatches / 128", "sign_mismatches", "max_sign_mismatches"),
    ("mantissa error mean", "mant_err_mean", "max_mant_err_mean"),
    ("mantissa error median", "mant_err_median", "max_mant_err_median"),
)


def fmt(value: float) -> str:
    return "no match" if value >= 2**63 else f"{value:.3g}"


def summary(rows: list[Row], dtype: torch.dtype) -> str:
    """Per figure: the largest honest value, the threshold, and the smallest value among the gross attacks
    that this figure catches (over its threshold at the blamed stage), with the attack's name."""
    thresholds, sampling = declared_thresholds(dtype)
    honest = [r for r in rows if not r.setup.attack]
    attacks = [r for r in rows if r.setup.attack and r.setup.blame is not None and not r.setup.subtle]
    lines = [
        "| figure (worst chunk) | largest honest | threshold | smallest gross attack it catches |",
        "|---|---|---|---|",
    ]
    for label, field, bound in FIGURES:
        threshold = getattr(thresholds, bound)
        largest = max(getattr(s, field) for r in honest for s in r.stages)
        caught = [(getattr(r.stages[r.setup.blame], field), r) for r in attacks if getattr(r.stages[r.setup.blame], field) > threshold]
        if caught:
            value, row = min(caught, key=lambda pair: pair[0])
            weakest = f"{fmt(value)} ({row.model}: {row.setup.name}; {len(caught)} of {len(attacks)} attack jobs caught by it)"
        else:
            weakest = "-"
        ratio = f" ({threshold / largest:.1f}x the honest worst)" if largest else ""
        lines.append(f"| {label} | {fmt(largest)} | <= {threshold}{ratio} | {weakest} |")
    largest = max(s.mant_err_mean for r in honest for s in r.stages)
    by_mean = [(r.stages[r.setup.blame].mant_err_mean, r) for r in attacks if r.stages[r.setup.blame].mant_err_mean > thresholds.max_mant_err_mean]
    if by_mean and largest:
        value, row = min(by_mean, key=lambda pair: pair[0])
        lines.append(
            f"| mantissa mean: weakest attack it catches / honest worst | | | {value / largest:.1f}x ({row.model}: {row.setup.name}) |"
        )
    lines.append(f"| logit drift (decode rows) | {max(r.logit_drift for r in honest):.3g} | margin {sampling.logit_margin:g} | - |")
    return "\n".join(lines)


def job_level(rows: list[Row]) -> str:
    """Whole jobs, per model and attack: the honest jobs' means at the attacked stage (median over honest jobs,
    and the largest), the attack's weakest job mean, their ratio, and the chunks a one-sided z-test needs to
    tell the attack from the worst honest kernel at alpha = 1e-4, power 0.99 (z 3.72 + 2.33)."""
    lines = [
        "| model | attack (stage) | jobs | honest job means at the stage: median / largest | attack's weakest job mean | "
        "ratio to largest honest | chunks needed |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if row.setup.attack and row.setup.blame is not None and not row.setup.draft_tokens:
            groups.setdefault((row.model, row.setup.name), []).append(row)
    for (model, name), attacked in groups.items():
        stage = attacked[0].setup.blame
        honest = [r for r in rows if r.model == model and not r.setup.attack]
        per_job = [job_figures(r.stages[stage].every_chunk).mant_err_mean for r in honest]
        chunk_means = [min(c.mant_err_mean, 1e9) for r in honest for c in r.stages[stage].every_chunk]
        sd = statistics.pstdev(chunk_means) or 1e-9
        typical, worst = statistics.median(per_job), max(per_job)
        attack = min(job_figures(r.stages[stage].every_chunk).mant_err_mean for r in attacked)
        gap = attack - worst
        needed = "never (inside honest drift)" if gap <= 0 else f"{math.ceil(((3.72 + 2.33) * sd / gap) ** 2)}"
        lines.append(
            f"| {model} | {name}{' (subtle)' if attacked[0].setup.subtle else ''} | {len(attacked)} | {typical:.2f} / "
            f"{worst:.2f} | {fmt(attack)} | {attack / max(worst, 1e-9):.2f}x | {needed} |"
        )
    return "\n".join(lines)


def dump(rows: list[Row], path: Path) -> None:
    data = [
        {
            "model": r.model, "setup": r.setup.name, "attack": r.setup.attack, "subtle": r.setup.subtle,
            "blame": r.setup.blame, "blamed": r.blamed, "sampling_failures": r.sampling_failures,
            "logit_drift": r.logit_drift, "position_drifts": list(r.position_drifts),
            "stages": [[dataclasses.asdict(c) for c in s.every_chunk] for s in r.stages],
        }
        for r in rows
    ]
    path.write_text(json.dumps(data))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32", help="the declared precision")
    parser.add_argument("--quick", action="store_true", help="tiny models only, 34-token jobs")
    parser.add_argument("--models", default="tiny-llama,tiny-qwen2,smollm2", help="comma-separated subset")
    parser.add_argument("--jobs", type=int, help="jobs per row on the tiny models (default 2 in bf16/fp16, else 1)")
    parser.add_argument("--new-tokens", type=int, help="tokens per tiny-model job (default 1000 in bf16/fp16, else 70)")
    parser.add_argument("--smollm2-tokens", type=int, help="tokens per SmolLM2 job (default 200 in bf16/fp16, else 70)")
    parser.add_argument("--sampling-positions", type=int, help="teacher-forced positions for the sampling drift (0: skip)")
    parser.add_argument(
        "--sequences", type=int, help="sequences per batch on the tiny models, each judged as a job (default 4 in bf16/fp16, else 1)"
    )
    parser.add_argument(
        "--first-job", type=int, default=0,
        help="index of the first tiny-model job (prompt and seed), and the sampling drift's seeds move with it: another "
        "value measures fresh jobs and positions, to add to an earlier run's count",
    )
    parser.add_argument("--honest-only", action="store_true", help="skip the attack matrix (to count honest chunks)")
    parser.add_argument("--write", type=Path, help="also write this precision's tables as markdown to this file")
    parser.add_argument("--dump", type=Path, help="also write every row's per-chunk figures as JSON (for re-analysis)")
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stagewise-calibration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = PRECISIONS[args.precision]
    sequences = args.sequences or (4 if dtype != torch.float32 and not args.quick else 1)
    started = time.monotonic()
    selected = models(args, args.work_dir)
    setups = honest_setups(dtype) + ([] if args.honest_only else attack_setups(3, dtype))
    rows: list[Row] = []
    with tqdm(total=sum(len(setups) * len(jobs) for *_, jobs in selected), desc="calibration rows", file=sys.stderr) as bar:
        for name, directory, layout, jobs in selected:
            # 2 threads gives the same figures as 1 on every model measured; on SmolLM2 it only costs time
            chosen = [s for s in setups if s.threads == 1 or name.startswith("tiny")]
            if name.startswith("tiny") and sequences > 1:  # every row a batch: more honest chunks per step
                chosen = [dataclasses.replace(s, batch=max(s.batch, sequences)) for s in chosen]
            bar.total -= (len(setups) - len(chosen)) * len(jobs)
            rows += run_matrix(
                name, directory, layout, jobs, chosen, progress=lambda row: bar.update(1), dtype=dtype,
                every_sequence=dtype != torch.float32,
            )
            if args.dump:
                dump(rows, args.dump)
    table, digest = format_table(rows), summary(rows, dtype)
    honest_chunks = sum(s.chunks for r in rows if not r.setup.attack for s in r.stages)
    honest_positions = sum(len(r.position_drifts) for r in rows if not r.setup.attack)
    misses = [r for r in rows if not r.as_expected]
    sections = [("Thresholds against the measured extremes", digest)]
    bound = (
        f"{honest_chunks} honest chunks (every stage of every honest job), "
        f"{sum(1 for r in rows if not r.setup.attack for s in r.stages if not s.ok)} failed: "
        f"false-positive rate per chunk <= {3 / max(honest_chunks, 1):.1e} at 95 % confidence (3/N)."
    )
    sections.append(("False-positive bound", bound))
    sampling_failures = sum(r.sampling_failures for r in rows if not r.setup.attack)
    if dtype != torch.float32:
        sections.append(("Whole jobs (job-level mean of the mantissa-error means, blamed stage)", job_level(rows)))
        positions = (4000 if args.quick else 100_000) if args.sampling_positions is None else args.sampling_positions
        if positions:
            report, refused = sampling_drift(selected, dtype, PARAMS, positions, args.work_dir, first_seed=100 + 1000 * args.first_job)
            sampling_failures += refused
            sections.append(("Sampling margin: honest drift over teacher-forced positions", report))
        sections.append(
            (
                "Job-level thresholds in force",
                f"mantissa-error mean over a job's chunks <= {JOB_THRESHOLDS[args.precision].max_mant_err_mean} "
                f"from {JOB_THRESHOLDS[args.precision].min_chunks} chunks on",
            )
        )
    sections.append(("Every row", table))
    for title, body in sections:
        print(f"\n## {title}\n\n{body}")
    elapsed = time.monotonic() - started
    print(
        f"\n{len(rows)} rows, {honest_chunks} honest chunks, {honest_positions} sampled honest positions in {elapsed:.0f} s; "
        + ("all as expected" if not misses else f"{len(misses)} NOT as expected")
        + (f"; {sampling_failures} honest sampled positions REFUSED" if sampling_failures else "")
    )
    if args.write:
        jobs = "; ".join(
            f"{name}: {len(jobs)} job(s) of {len(jobs[0].prompt)}-token prompt + {jobs[0].new_tokens} new tokens"
            for name, _, _, jobs in selected
        )
        args.write.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"### {title}\n\n{text}\n\n" for title, text in sections)
        args.write.write_text(
            f"## {args.precision} declared\n\n"
            f"Written by `bench/calibrate_toploc.py --precision {args.precision}{' --quick' if args.quick else ''}` "
            f"(torch {torch.__version__}, CPU; {jobs}; sampling T={PARAMS.temperature}, top-k {PARAMS.top_k}, top-p "
            f"{PARAMS.top_p}). Three stages per model; the validator replays prompt + output in one prefill (SDPA, "
            f"1 thread) in the declared precision.\n\n" + body
        )
        print(f"wrote {args.write}")
    bad = misses or not rows or any(math.isnan(r.logit_drift) for r in rows) or sampling_failures
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
