"""Calibrate the handoff tolerance: how far the rows a stage honestly sends are from the validator's replay,
over every entry, and how far a stage moves them when it alters only what its proof does not bind.

    .venv/bin/python bench/calibrate_handoff.py            # tiny Llama, tiny Qwen2, SmolLM2-135M
    .venv/bin/python bench/calibrate_handoff.py --quick    # the tiny models only
    .venv/bin/python bench/calibrate_handoff.py --precision bf16   # stages and replay computing in bf16

Honest: jobs of several prompt lengths, run together (so batch composition varies) through a three-stage
pipeline with fp32 and with bf16 on the wire; every row stages 1 and 2 received is compared with the
one-prefill replay of the stage before them, every earlier handoff rounded to the wire dtype as the
pipeline rounds it (node/pipeline/model.py `boundary_as_sent`; node/validator/defence.py `row_deviation`:
per row, relative L1 against the replay rounded to the wire dtype). Attack: the `quiet` cheat (node/worker/cheats.py) applied to each
job's received prefill block with factors 0.9, 0.99 and 0.999; the bench checks the proof is unchanged
(that is what makes the alteration invisible to the receiver) and prints the smallest deviation it causes.

Exits 1 when an honest row reaches the threshold (node/toploc/thresholds.py HANDOFF) or the quiet
alteration by 1 % (factor 0.99) does not exceed it; 0.999 is reported as what the tolerance cannot see.

`--precision bf16|fp16` (PROTOCOL I8): the stages compute in it and hand over in it, the replay runs in it,
and the threshold is `thresholds_for(precision).handoff`; low-precision compute drifts by about 1e-2 relative
L1 a row, so what must be caught there is a 10 % alteration (factor 0.9), not 1 %.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from node.pipeline.wire import rows_tensor  # noqa: E402
from node.protocol.job import SamplingParams  # noqa: E402
from node.toploc.activation import build_proofs  # noqa: E402
from node.toploc.thresholds import thresholds_for  # noqa: E402
from node.validator.defence import row_deviation  # noqa: E402
from node.worker.cheats import outside_top_k  # noqa: E402

FACTORS = (0.9, 0.99, 0.999)
MUST_CATCH = 0.99
LOW_PRECISION_MUST_CATCH = 0.9


def models(quick: bool, work: Path) -> list[tuple[str, Path, list[tuple[int, int]], list[list[int]]]]:
    from node.pipeline.tiny import tiny_model_dir

    prompts = [list(range(3, 3 + n)) for n in (5, 9, 16, 23)]
    chosen = [(f"tiny {arch}", tiny_model_dir(arch, 0, work / f"tiny-{arch}"), [(0, 2), (2, 4), (4, 6)], prompts)
              for arch in ("llama", "qwen2")]
    if not quick:
        from node.pipeline.smollm2 import chat_prompt_ids, load_tokenizer, smollm2_dir

        directory = smollm2_dir()
        tokenizer = load_tokenizer(directory)
        questions = ["Explain in two sentences why the sky is blue.", "What is 17 times 23?",
                     "Name three rivers in Europe.", "Write a haiku about rain."]
        chosen.append(("SmolLM2-135M", directory, [(0, 10), (10, 20), (20, 30)],
                       [chat_prompt_ids(tokenizer, q) for q in questions]))
    return chosen


async def honest_rows(model_dir: Path, bounds, prompts, wire: str, new_tokens: int, precision: str = "fp32"):
    """(job spec, output, {stage: received rows [T, H] as fp32}) for each prompt, run together."""
    from node.pipeline.local import LocalPipeline

    kept = []
    options = {1: {"on_result": kept.append}, 2: {"on_result": kept.append}}
    async with LocalPipeline(model_dir, 3, wire_dtype=wire, precision=precision, layer_bounds=bounds,
                             stage_options=options) as pipe:
        specs = [pipe.spec(p, SamplingParams(temperature=0.8, top_k=50, max_new_tokens=new_tokens), seed=i)
                 for i, p in enumerate(prompts)]
        outputs = await asyncio.gather(*[pipe.run(spec) for spec in specs])
    jobs = []
    for spec, output in zip(specs, outputs):
        received = {}
        for result in kept:
            if result.job_id == spec.job_id_hex:
                parts = [rows_tensor(h.rows, h.claim.dtype, h.claim.count) for h in result.handoffs]
                received[result.stage_index] = torch.cat(parts).float()
        jobs.append((spec, output, received))
    return jobs


def measure(name: str, model_dir: Path, bounds, prompts, new_tokens: int,
            precision: str = "fp32") -> tuple[list[str], float, dict[float, float], bool]:
    from node.pipeline.model import boundary_as_sent, replay
    from node.pipeline.weights import load_stage
    from node.pipeline.wire import WIRE_DTYPES

    whole = load_stage(model_dir, dtype=WIRE_DTYPES[precision])
    lines, honest_worst, attack_least, proofs_kept = [], 0.0, {f: float("inf") for f in FACTORS}, True
    for wire in ("fp32", "bf16") if precision == "fp32" else (precision,):
        least_here = {f: float("inf") for f in FACTORS}
        jobs = asyncio.run(honest_rows(model_dir, bounds, prompts, wire, new_tokens, precision))
        worst = 0.0
        for spec, output, received in jobs:
            tokens = list(spec.prompt_token_ids) + list(output[:-1])
            hidden, _ = replay(whole, tokens, [b for _, b in bounds])
            for stage, rows in received.items():  # what the validator compares a defence with (replay.py)
                sent = boundary_as_sent(whole, tokens, 0, [b for _, b in bounds][:stage], WIRE_DTYPES[wire])
                worst = max(worst, float(row_deviation(rows, sent.float(), wire).max()))
            prefill = hidden[0][: len(spec.prompt_token_ids)].float()
            honest_proof = build_proofs(prefill, None)
            for factor in FACTORS:
                quiet = outside_top_k(prefill, factor)
                proofs_kept &= build_proofs(quiet, None) == honest_proof
                deviation = float(row_deviation(quiet.to(WIRE_DTYPES[wire]), prefill, wire).max())
                least_here[factor] = min(least_here[factor], deviation)
        honest_worst = max(honest_worst, worst)
        attack_least = {f: min(attack_least[f], least_here[f]) for f in FACTORS}
        quiet = "  ".join(f"x{f}: {least_here[f]:.3g}" for f in FACTORS)
        lines.append(f"{name:14} {precision} compute, {wire:5} wire: honest worst row {worst:9.3g}   quiet, least worst row: {quiet}   "
                     f"({len(jobs)} jobs, {sum(r.shape[0] for _, _, rec in jobs for r in rec.values())} rows)")
    return lines, honest_worst, attack_least, proofs_kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models only, shorter jobs")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="what the stages compute in and the replay runs in (PROTOCOL I8)")
    args = parser.parse_args()
    torch.manual_seed(0)
    threshold = thresholds_for(args.precision).handoff.max_row_rel_l1
    must_catch = MUST_CATCH if args.precision == "fp32" else LOW_PRECISION_MUST_CATCH
    honest, attack, kept = 0.0, {f: float("inf") for f in FACTORS}, True
    with tempfile.TemporaryDirectory() as work:
        for name, model_dir, bounds, prompts in models(args.quick, Path(work)):
            lines, worst, least, proofs_kept = measure(name, model_dir, bounds, prompts, 40 if args.quick else 70,
                                                       args.precision)
            print("\n".join(lines), flush=True)
            honest = max(honest, worst)
            attack = {f: min(attack[f], least[f]) for f in FACTORS}
            kept &= proofs_kept
    print(f"\nthreshold (node/toploc/thresholds.py thresholds_for({args.precision!r}).handoff): {threshold:g}")
    print(f"honest worst row, every model and wire dtype:  {honest:.3g}   ({threshold / max(honest, 1e-30):.0f}x below)")
    for factor in FACTORS:
        figure = attack[factor]
        verdict = "caught" if figure > threshold else "NOT seen (detection floor)"
        print(f"quiet x{factor:<6} smallest worst row:        {figure:.3g}   ({figure / threshold:.2f}x the threshold: {verdict})")
    print(f"the quiet alteration left every proof byte for byte unchanged: {kept}")
    ok = honest < threshold and attack[must_catch] > threshold and kept
    print("PASS" if ok else f"FAIL: the threshold does not separate honest rows from a quiet alteration x{must_catch}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
