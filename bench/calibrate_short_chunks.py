"""Short-chunk figures in a low declared precision: honest and attacked chunks of 1-15 rows, by row count.

    .venv/bin/python bench/calibrate_short_chunks.py --model smollm2 --jobs 6 --new-tokens 33
    .venv/bin/python bench/calibrate_short_chunks.py --model tiny-llama --dump /tmp/short.json

A job whose every chunk is short (a prompt under 16 tokens, a few new tokens) is judged only by
`BF16_ACTIVATION.short_tiers` (node/toploc/thresholds.py). This bench runs short jobs (prompts of 1-15 tokens)
through a three-stage worker group for every honest setup of the calibration (node/pipeline/calibration.py,
emulated GPU kernels included) and for int4 / 2:4-sparse weights on the middle stage, replays them as the
validator does, and judges, at every stage, the prefill chunk (1-15 rows) and the decode rows cut into tiles of
every length 1-15 (the tile starting at row 0 is exactly the decode chunk of a job cut after that many tokens;
the replay is causal, so the others are the same rows a longer job's last chunk holds). It prints, per tier of
rows, the honest worst figures, the bounds in force, and the attacks' weakest chunk at the stage they must be
blamed on, and exits 1 when an honest chunk fails its tier.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from node.pipeline.calibration import PRECISIONS, Job, WorkerSetup, attack_setups, honest_setups, run_batch  # noqa: E402
from node.pipeline.model import replay  # noqa: E402
from node.pipeline.weights import load_stage  # noqa: E402
from node.protocol.job import SamplingParams  # noqa: E402
from node.toploc.activation import split_replay  # noqa: E402
from node.toploc.codec import build_chunk_proofs, chunk_figures  # noqa: E402
from node.toploc.thresholds import ActivationThresholds, thresholds_for  # noqa: E402

PARAMS = SamplingParams(temperature=0.8, top_k=50, top_p=0.95)
TEXTS = (
    "The quick brown fox jumps over the lazy dog near the river bank today.",
    "Explain in two sentences why the sky is blue and the sunset is red.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Paris is the capital of France; Berlin is the capital of Germany, and",
    "Once upon a time, in a small village by the sea, there lived a",
    "1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233",
)


@dataclass(frozen=True)
class ShortChunk:
    setup: str
    attack: bool
    blame: int | None
    stage: int
    kind: str  # "prefill" | "decode"
    rows: int
    exp: int
    mean: float
    median: float
    points: int


def model_choice(name: str, work: Path) -> tuple[Path, list[tuple[int, int]], list[list[int]]]:
    """The model directory, its three-stage layout and prompt material to cut short prompts from."""
    if name == "smollm2":
        from node.pipeline.smollm2 import load_tokenizer, smollm2_dir

        directory = smollm2_dir()
        tokenizer = load_tokenizer(directory)
        return directory, [(0, 10), (10, 20), (20, 30)], [tokenizer.encode(text) for text in TEXTS]
    from node.pipeline.tiny import tiny_model_dir

    arch = name.removeprefix("tiny-")
    generator = torch.Generator().manual_seed(5)
    material = [torch.randint(3, 250, (16,), generator=generator).tolist() for _ in TEXTS]
    return tiny_model_dir(arch, 0, work / name), [(0, 2), (2, 4), (4, 6)], material


def short_chunks(worker: torch.Tensor, replayed: torch.Tensor, kind: str, max_rows: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """(rows, worker chunk, replayed chunk): the whole block for a prefill, tiles of 1..max_rows rows for decode rows."""
    if kind == "prefill":
        return [(worker.shape[0], worker, replayed)] if worker.shape[0] else []
    tiles = []
    for rows in range(1, max_rows + 1):
        for start in range(0, worker.shape[0] - rows + 1, rows):
            tiles.append((rows, worker[start : start + rows], replayed[start : start + rows]))
    return tiles


def measure(setup: WorkerSetup, runs, model, layout, max_rows: int) -> list[ShortChunk]:
    out = []
    for sequence, run in runs:
        boundaries, _ = replay(model, list(sequence.prompt) + list(run.tokens[:-1]), [end for _, end in layout])
        for stage, (hidden, sent) in enumerate(zip(boundaries, run.sent)):
            replayed = split_replay(hidden.float(), len(sequence.prompt))
            pieces = []
            for kind, worker, mine in (("prefill", sent[0], replayed[0]), ("decode", sent[1], replayed[1])):
                pieces += [(kind, rows, w, r) for rows, w, r in short_chunks(worker, mine, kind, max_rows)]
            proofs = build_chunk_proofs([w for _, _, w, _ in pieces])
            figures = chunk_figures([r for _, _, _, r in pieces], proofs)
            for (kind, rows, _, _), f in zip(pieces, figures):
                out.append(
                    ShortChunk(setup.name, setup.attack, setup.blame, stage, kind, rows, f.exp_mismatches, f.mant_err_mean,
                               f.mant_err_median, f.points)
                )
    return out


TIERS = ((1, 2), (3, 4), (5, 15))


def passes(chunk: ShortChunk, thresholds: ActivationThresholds) -> bool:
    exp, mean, median = thresholds.bounds_for(chunk.rows)
    return chunk.exp <= exp * chunk.points / 128 and chunk.mean <= mean and chunk.median <= median


def report(chunks: list[ShortChunk], thresholds: ActivationThresholds) -> tuple[str, int]:
    lines = [
        "| rows | kind | honest chunks | honest worst mean / median / exp | bound | failing honest | "
        + " | ".join(f"{name}: weakest at its stage, caught" for name in sorted({c.setup for c in chunks if c.attack}))
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len({c.setup for c in chunks if c.attack}),
    ]
    failing = 0
    attacks = sorted({c.setup for c in chunks if c.attack})
    for low, high in TIERS:
        for kind in ("prefill", "decode"):
            tier = [c for c in chunks if low <= c.rows <= high and c.kind == kind]
            honest = [c for c in tier if not c.attack]
            if not honest:
                continue
            bad = [c for c in honest if not passes(c, thresholds)]
            failing += len(bad)
            exp, mean, median = thresholds.bounds_for(low)
            cells = []
            for name in attacks:
                hit = [c for c in tier if c.setup == name and c.stage == c.blame]
                if not hit:
                    cells.append("-")
                    continue
                weakest = min(hit, key=lambda c: c.mean)
                caught = sum(1 for c in hit if not passes(c, thresholds))
                cells.append(f"{weakest.mean:.2f} / {weakest.median:g} / {weakest.exp}; {caught} of {len(hit)}")
            lines.append(
                f"| {low}-{high} | {kind} | {len(honest)} | {max(c.mean for c in honest):.2f} / "
                f"{max(c.median for c in honest):g} / {max(c.exp for c in honest)} | {mean:g} / {median:g} / {exp} | "
                f"{len(bad)} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines), failing


def by_rows(chunks: list[ShortChunk]) -> str:
    """Honest worst mean per row count and kind, the tail the tiers are cut from."""
    lines = ["| rows | honest worst mean prefill / decode | median of honest means decode |", "|---|---|---|"]
    for rows in range(1, 16):
        honest = [c for c in chunks if not c.attack and c.rows == rows]
        pre = [c.mean for c in honest if c.kind == "prefill"]
        dec = sorted(c.mean for c in honest if c.kind == "decode")
        lines.append(
            f"| {rows} | {max(pre):.2f} / " if pre else f"| {rows} | - / "
        )
        lines[-1] += (f"{dec[-1]:.2f} | {dec[len(dec) // 2]:.2f} |" if dec else "- | - |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=("smollm2", "tiny-llama", "tiny-qwen2"))
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16"))
    parser.add_argument("--jobs", type=int, default=4, help="short jobs per setup (prompt lengths spread over 1-15)")
    parser.add_argument("--new-tokens", type=int, default=33)
    parser.add_argument("--max-rows", type=int, default=15)
    parser.add_argument("--attacks", default="int4,sparse_2_4", help="weight cheats on the middle stage (comma-separated)")
    parser.add_argument("--setups", help="only honest setups whose name contains one of these (comma-separated)")
    parser.add_argument("--dump", type=Path, help="write every chunk's figures as JSON")
    parser.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "stagewise-calibration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = PRECISIONS[args.precision]
    thresholds = thresholds_for(args.precision).activation
    directory, layout, material = model_choice(args.model, args.work_dir)
    lengths = [1 + (j * 14 // max(args.jobs - 1, 1)) if args.jobs > 1 else 8 for j in range(args.jobs)]
    jobs = [Job(tuple(material[j % len(material)][:length]), args.new_tokens, PARAMS, 11 + j) for j, length in enumerate(lengths)]
    honest = [s for s in honest_setups(dtype) if s.threads == 1]
    if args.setups:
        honest = [s for s in honest if any(part in s.name for part in args.setups.split(","))]
    wanted = set(args.attacks.split(",")) if args.attacks else set()
    attacks = [s for s in attack_setups(3, dtype) if s.weight_cheat and not s.subtle and s.weight_cheat[1] in wanted]
    model = load_stage(directory, 0, None, dtype=dtype)
    chunks: list[ShortChunk] = []
    started = time.monotonic()
    for setup in honest + attacks:
        for job in jobs:
            runs = run_batch(directory, layout, job, setup, dtype)
            chunks += measure(setup, runs, model, layout, args.max_rows)
        print(f"{time.monotonic() - started:6.0f} s  {setup.name}", file=sys.stderr, flush=True)
    table, failing = report(chunks, thresholds)
    print(f"## {args.model}, {args.precision}: {len(jobs)} jobs a setup (prompts of {lengths} tokens + {args.new_tokens}), "
          f"{len(honest)} honest setups, {len(attacks)} attacks on stage 1\n")
    print(table)
    print("\n" + by_rows(chunks))
    print(f"\n{len(chunks)} chunks ({sum(not c.attack for c in chunks)} honest), {failing} honest failing, "
          f"{time.monotonic() - started:.0f} s")
    if args.dump:
        args.dump.write_text(json.dumps([c.__dict__ for c in chunks]))
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
