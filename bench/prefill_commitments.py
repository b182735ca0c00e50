"""What a prefill chunk's commitment sees on SmolLM2-135M in bf16: a changed prompt token against honest kernels.

    .venv/bin/python bench/prefill_commitments.py        # 3 chat prompts of ~40 tokens, ~4 minutes on one core

A prompt token changed by stage 0 is a different input from the job's prompt, so stage 0's rows differ from the
replay's from that position on; yet the proof of the prefill chunk (the 128 largest |entries| of the whole chunk)
does not see it on SmolLM2 in bf16. For every stage boundary this prints, honest worst (every batch-1 honest setup
of node/pipeline/calibration.py, emulated GPU kernels included) against each attack's weakest prompt, the figures
(mantissa-error mean / exponent mismatches) of four commitments of the prefill block:

- `proof`: the TOPLOC proof as built today (top-128 of the chunk);
- `row share`: the top ceil(128 / rows) entries of every row, i.e. a per-row share of the top-k;
- `col centred`: the top-128 of the chunk less each column's median over its rows (per-dimension normalisation);
- `worst row`: each row's own top-128 (one proof per prefill row), the worst row's figures;

and the largest relative L1 distance of a row from the replay over every entry (what the I2 handoff rows show).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from node.pipeline.calibration import Job, WorkerSetup, honest_setups, run_batch  # noqa: E402
from node.pipeline.model import replay  # noqa: E402
from node.pipeline.smollm2 import chat_prompt_ids, load_tokenizer, smollm2_dir  # noqa: E402
from node.pipeline.weights import load_stage  # noqa: E402
from node.protocol.job import SamplingParams  # noqa: E402
from node.toploc.codec import NO_MATCH, build_chunk_proofs, chunk_figures  # noqa: E402

QUESTIONS = (
    "Explain in two sentences why the sky is blue.",
    "Write a haiku about autumn leaves falling.",
    "What is the capital of Australia and why?",
)
LAYOUT = [(0, 10), (10, 20), (20, 30)]
COMMITMENTS = ("proof", "row share", "col centred", "worst row", "row rel L1")


def figures(worker: torch.Tensor, replayed: torch.Tensor, how: str) -> tuple[float, float]:
    """(mantissa-error mean, exponent mismatches) of one commitment of a prefill block; for `row rel L1`,
    (the largest relative L1 distance of a row, 0)."""
    rows = worker.shape[0]
    if how == "proof":
        f = chunk_figures([replayed], build_chunk_proofs([worker]))[0]
        return f.mant_err_mean, f.exp_mismatches
    if how == "col centred":
        centred_worker, centred_replay = worker - worker.median(0).values, replayed - replayed.median(0).values
        f = chunk_figures([centred_replay], build_chunk_proofs([centred_worker]))[0]
        return f.mant_err_mean, f.exp_mismatches
    if how == "row rel L1":
        return float(((worker - replayed).abs().sum(1) / replayed.abs().sum(1)).max()), 0
    k = math.ceil(128 / rows) if how == "row share" else 128
    each = chunk_figures([replayed[i : i + 1] for i in range(rows)], build_chunk_proofs([worker[i : i + 1] for i in range(rows)], k=k), k=k)
    means = [f.mant_err_mean for f in each if f.mant_err_mean != NO_MATCH]
    if how == "row share":  # one commitment: every row's share pooled
        return (float(np.mean(means)) if means else NO_MATCH), sum(f.exp_mismatches for f in each)
    return max(f.mant_err_mean for f in each), max(f.exp_mismatches for f in each)


def main() -> int:
    torch.set_num_threads(1)
    dtype = torch.bfloat16
    directory = smollm2_dir()
    tokenizer = load_tokenizer(directory)
    model = load_stage(directory, 0, None, dtype=dtype)
    honest = [s for s in honest_setups(dtype) if s.threads == 1 and s.batch == 1]
    attacks = [
        WorkerSetup("prompt token changed", attack=True, change_prompt=True, blame=0),
        WorkerSetup("stage 1 int8 weights", attack=True, weight_cheat=(1, "int8"), blame=1),
        WorkerSetup("stage 1 int4 weights", attack=True, weight_cheat=(1, "int4"), blame=1),
    ]
    results: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    lengths = []
    for question in QUESTIONS:
        prompt = chat_prompt_ids(tokenizer, question)
        lengths.append(len(prompt))
        job = Job(tuple(prompt), 4, SamplingParams(temperature=0.8, top_k=50, top_p=0.95), 7)
        for setup in honest + attacks:
            (_, run), *_ = run_batch(directory, LAYOUT, job, setup, dtype)
            boundaries, _ = replay(model, list(job.prompt) + list(run.tokens[:-1]), [end for _, end in LAYOUT])
            for stage, hidden in enumerate(boundaries):
                for how in COMMITMENTS:
                    results.setdefault((setup.name, stage, how), []).append(
                        figures(run.sent[stage][0], hidden.float()[: len(prompt)], how)
                    )
        print(f"done: {question}", file=sys.stderr, flush=True)
    print(f"SmolLM2-135M, bf16, prefill chunks of {lengths} rows; honest: {len(honest)} setups. "
          "Cells: mean / exponent mismatches (row rel L1: the largest row's distance); attacks: weakest prompt, ratio to honest worst.")
    for stage in range(len(LAYOUT)):
        print(f"\n| stage {stage} boundary | honest worst | " + " | ".join(a.name for a in attacks) + " |")
        print("|---|---|" + "---|" * len(attacks))
        for how in COMMITMENTS:
            worst_mean = max(m for s in honest for m, _ in results[(s.name, stage, how)])
            worst_exp = max(e for s in honest for _, e in results[(s.name, stage, how)])
            cells = []
            for attack in attacks:
                mean = min(m for m, _ in results[(attack.name, stage, how)])
                exp = min(e for _, e in results[(attack.name, stage, how)])
                cells.append(f"{mean:.3g} / {exp:g} ({mean / max(worst_mean, 1e-9):.1f}x)")
            print(f"| {how} | {worst_mean:.3g} / {worst_exp:g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
