"""Calibrate the cross-job test (node/toploc/job_statistics.py: `drift_step` with the precision's SPRT): how many
jobs it needs to flag a subtle cheat, whom it blames, and how often it flags honest workers.

    .venv/bin/python bench/calibrate_cross_job.py                 # bf16, tiny Llama and Qwen2, 16 jobs a setup
    .venv/bin/python bench/calibrate_cross_job.py --quick         # 4 jobs a setup, fewer resampled histories

Step 1, real figures: each emulated GPU kernel setup (node/pipeline/kernel_variants.py) and the fp8 e4m3 weight
cheat on stage 1 run 330-token jobs through three stages (four sequences a batch, each judged as a job); every
stage's whole-job figures over its full chunks are kept, as the verdict records them. Step 2, resampling: jobs drawn
at random from those (every stage of a job together) run through `drift_step`: for the cheat, the jobs until a flag
and the stage flagged; for each honest setup, the flags over --honest-jobs jobs. Exits 1 when an honest setup is
flagged, the cheat is flagged at another stage than its own, or it is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from node.pipeline.calibration import PRECISIONS, Job, attack_setups, check_rows, honest_setups  # noqa: E402
from node.pipeline.tiny import tiny_model_dir  # noqa: E402
from node.protocol.job import SamplingParams  # noqa: E402
from node.toploc.job_statistics import SEQUENTIAL_TESTS, JobFigures, SequentialState, drift_step, job_figures  # noqa: E402

PARAMS = SamplingParams(temperature=0.8, top_k=50, top_p=0.95)
LAYOUT = [(0, 2), (2, 4), (4, 6)]
# Stages judged on figures of their own in a bf16 job of an orchestrating validator: stage 0 (it starts from the
# tokens) and stage 1 (the handoff audit replays it from the rows it received). Stage 2's figures here are replayed
# from the tokens, which never count in its test (the validator would ask it for its rows when they lean to a cheat;
# its own rows are not modelled here).
AUDITED = frozenset({0, 1})


def real_jobs(model_dir: Path, setup, jobs: int, dtype: torch.dtype) -> list[tuple[JobFigures, ...]]:
    """Every sequence's per-stage whole-job figures over its full (decode) chunks."""
    found = []
    for j in range(jobs):
        job = Job(prompt=tuple(range(3 + j, 15 + j)), new_tokens=330, params=PARAMS, seed=170 + j)
        for row in check_rows("tiny", model_dir, LAYOUT, job, setup, dtype=dtype, every_sequence=True):
            found.append(tuple(job_figures(stage.every_chunk[1:]) for stage in row.stages))  # [0]: the prefill
    return found


def jobs_to_flag(test, cheat: list[tuple[JobFigures, ...]], histories: int, limit: int = 2000) -> tuple[list[int], int]:
    found, wrong = [], 0
    for history in range(histories):
        rng = random.Random(history)
        states = (SequentialState(),) * 3
        for n in range(limit):
            step = drift_step(test, states, list(rng.choice(cheat)), judged=AUDITED)
            states = step.states
            if step.blamed is not None:
                wrong += step.blamed != 1
                found.append(n + 1)
                break
    return sorted(found), wrong


def honest_flags(test, honest: list[tuple[JobFigures, ...]], jobs: int) -> tuple[int, int]:
    rng = random.Random(7)
    states, flags, decisions = (SequentialState(),) * 3, 0, 0
    for _ in range(jobs):
        step = drift_step(test, states, list(rng.choice(honest)), judged=AUDITED)
        states = step.states
        flags += step.blamed is not None
        decisions += sum(d in ("clear", "flag") for d in step.decisions)
    return flags, decisions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=sorted(SEQUENTIAL_TESTS), default="bf16")
    parser.add_argument("--quick", action="store_true", help="4 real jobs a setup, 2,000 cheat histories")
    parser.add_argument("--jobs", type=int, help="real jobs (batches of 4 sequences) per setup (default 4, quick 1)")
    parser.add_argument("--histories", type=int, help="resampled cheat histories (default 20,000)")
    parser.add_argument("--honest-jobs", type=int, help="resampled honest jobs per setup (default 200,000)")
    parser.add_argument("--models", default="llama,qwen2")
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stagewise-calibration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = PRECISIONS[args.precision]
    test = SEQUENTIAL_TESTS[args.precision]
    batches = args.jobs or (1 if args.quick else 4)
    histories = args.histories or (2_000 if args.quick else 20_000)
    honest_jobs = args.honest_jobs or (20_000 if args.quick else 200_000)
    print(f"{args.precision}: H0 {test.honest_mean}, H1 {test.cheat_mean}, chunk sd {test.chunk_sd}, "
          f"false alarms <= {test.false_alarm_bound:.2e} per decision; {batches * 4} real jobs a setup")
    failures = []
    for arch in args.models.split(","):
        model_dir = tiny_model_dir(arch, 0, args.work_dir / f"tiny-{arch}")
        cheat_setup = next(s for s in attack_setups(3, dtype) if "fp8 e4m3" in s.name)
        setups = [s for s in honest_setups(dtype) if s.name.startswith("GPU kernels")] + [cheat_setup]
        figures = {}
        for setup in setups:
            started = time.perf_counter()
            figures[setup.name] = real_jobs(model_dir, dataclasses.replace(setup, batch=4), batches, dtype)
            means = [[job[s].mant_err_mean for job in figures[setup.name]] for s in range(3)]
            print(f"  {arch} {setup.name}: job means per stage (mean / max / job sd) "
                  + "; ".join(f"{statistics.mean(m):.2f} / {max(m):.2f} / {statistics.stdev(m):.3f}" for m in means)
                  + f"  [{time.perf_counter() - started:.0f} s]", flush=True)
        found, wrong = jobs_to_flag(test, figures[cheat_setup.name], histories)
        if found:
            print(f"| {arch} | {cheat_setup.name} flagged after (jobs, median / p95 / p99) | "
                  f"{found[len(found) // 2]} / {found[int(len(found) * .95)]} / {found[int(len(found) * .99)]} | "
                  f"found in {len(found)} of {histories} histories, wrong stage {wrong} |")
        if len(found) < histories or wrong:
            failures.append(f"{arch}: fp8 missed in {histories - len(found)}, wrong stage in {wrong}")
        for setup in setups[:-1]:
            flags, decisions = honest_flags(test, figures[setup.name], honest_jobs)
            print(f"| {arch} | honest {setup.name} | {flags} flagged in {honest_jobs} jobs ({decisions} decisions) |")
            if flags:
                failures.append(f"{arch}: honest {setup.name} flagged {flags} times")
    if failures:
        print("MISSED: " + "; ".join(failures))
        return 1
    print("all as expected: the cheat flagged at its own stage in every history, no honest setup flagged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
