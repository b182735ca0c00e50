"""Calibrate the TOPLOC thresholds: run the honest and attack matrices and print the measured figures.

    .venv/bin/python bench/calibrate_toploc.py                 # tiny Llama, tiny Qwen2, SmolLM2-135M
    .venv/bin/python bench/calibrate_toploc.py --quick         # tiny models, short jobs (under a minute)
    .venv/bin/python bench/calibrate_toploc.py --write docs/verification.md

Each row runs one job through a three-stage worker group computed one way (node/pipeline/calibration.py) and
checks it as the validator does: every stage's activation proofs against a one-prefill replay of the whole
model, then the sampling proof. Figures are the worst chunk of a stage (of the stage that must be blamed,
for attacks; of all stages, for honest rows); "logit drift" is the largest difference between the logits
the last stage sampled from and the replayed ones. The summary puts the largest honest figure, the
threshold in force (node/toploc/thresholds.py) and the smallest attack figure side by side.

Exits 1 when an honest row fails (a false alarm) or an attack is not blamed on the stage that did it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from node.pipeline.calibration import Job, Row, attack_setups, format_table, honest_setups, run_matrix  # noqa: E402
from node.protocol.job import SamplingParams  # noqa: E402
from node.toploc.thresholds import ACTIVATION, SAMPLING  # noqa: E402

PARAMS = SamplingParams(temperature=0.8, top_k=50, top_p=0.95)


def models(quick: bool, wanted: set[str], work: Path) -> list[tuple[str, Path, list[tuple[int, int]], Job]]:
    from node.pipeline.tiny import tiny_model_dir

    tiny_job = Job(prompt=tuple(range(3, 3 + (8 if quick else 12))), new_tokens=34 if quick else 70, params=PARAMS, seed=7)
    chosen = []
    for arch in ("llama", "qwen2"):
        if f"tiny-{arch}" in wanted:
            chosen.append((f"tiny {arch}", tiny_model_dir(arch, 0, work / f"tiny-{arch}"), [(0, 2), (2, 4), (4, 6)], tiny_job))
    if "smollm2" in wanted and not quick:
        from node.pipeline.smollm2 import chat_prompt_ids, load_tokenizer, smollm2_dir

        directory = smollm2_dir()
        prompt = chat_prompt_ids(load_tokenizer(directory), "Explain in two sentences why the sky is blue.")
        job = Job(prompt=tuple(prompt), new_tokens=70, params=PARAMS, seed=7)
        chosen.append(("SmolLM2-135M", directory, [(0, 10), (10, 20), (20, 30)], job))
    return chosen


FIGURES = (
    ("exponent mismatches / 128", "exp_mismatches", ACTIVATION.max_exp_mismatches),
    ("sign mismatches / 128", "sign_mismatches", ACTIVATION.max_sign_mismatches),
    ("mantissa error mean", "mant_err_mean", ACTIVATION.max_mant_err_mean),
    ("mantissa error median", "mant_err_median", ACTIVATION.max_mant_err_median),
)


def summary(rows: list[Row]) -> str:
    """Per figure: the largest honest value, the threshold, and the smallest value among the attacks that
    this figure catches (over its threshold at the blamed stage), with the attack's name."""
    honest = [r for r in rows if not r.setup.attack]
    attacks = [r for r in rows if r.setup.attack and r.setup.blame is not None]

    def fmt(value: float) -> str:
        return "no match" if value >= 2**63 else f"{value:.3g}"

    lines = [
        "| figure (worst chunk) | largest honest | threshold | smallest attack it catches |",
        "|---|---|---|---|",
    ]
    for label, field, threshold in FIGURES:
        largest = max(getattr(s, field) for r in honest for s in r.stages)
        caught = [(getattr(r.stages[r.setup.blame], field), r) for r in attacks if getattr(r.stages[r.setup.blame], field) > threshold]
        if caught:
            value, row = min(caught, key=lambda pair: pair[0])
            weakest = f"{fmt(value)} ({row.model}: {row.setup.name}; {len(caught)} of {len(attacks)} attacks caught by it)"
        else:
            weakest = "-"
        lines.append(f"| {label} | {fmt(largest)} | <= {threshold} | {weakest} |")
    lines.append(f"| logit drift (sampling margin) | {max(r.logit_drift for r in honest):.2e} | <= {SAMPLING.logit_margin:g} | - |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models only, 34-token jobs")
    parser.add_argument("--models", default="tiny-llama,tiny-qwen2,smollm2", help="comma-separated subset")
    parser.add_argument("--write", type=Path, help="also write the tables as markdown to this file")
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stagewise-calibration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    selected = models(args.quick, set(args.models.split(",")), args.work_dir)
    setups = honest_setups() + attack_setups(3)
    rows: list[Row] = []
    with tqdm(total=len(selected) * len(setups), desc="calibration rows", file=sys.stderr) as bar:
        for name, directory, layout, job in selected:
            rows += run_matrix(name, directory, layout, job, setups, progress=lambda row: bar.update(1))
    table, digest = format_table(rows), summary(rows)
    print(table)
    print()
    print(digest)
    misses = [r for r in rows if not r.as_expected]
    elapsed = time.monotonic() - started
    print(f"\n{len(rows)} rows in {elapsed:.0f} s; " + ("all as expected" if not misses else f"{len(misses)} NOT as expected"))
    if args.write:
        jobs = "; ".join(f"{name}: {len(job.prompt)}-token prompt, {job.new_tokens} new tokens" for name, _, _, job in selected)
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(
            "# Verification: measured figures and thresholds\n\n"
            f"Written by `bench/calibrate_toploc.py{' --quick' if args.quick else ''}` (torch {torch.__version__}, CPU, "
            f"fp32 declared; {jobs}; sampling T={PARAMS.temperature}, top-k {PARAMS.top_k}, top-p {PARAMS.top_p}). "
            "Three stages per model; the validator replays prompt + output in one prefill (SDPA, 1 thread).\n\n"
            "## Thresholds against the measured extremes\n\n" + digest + "\n\n## Every row\n\n" + table + "\n"
        )
        print(f"wrote {args.write}")
    return 1 if misses or not rows or any(math.isnan(r.logit_drift) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
