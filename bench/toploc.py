"""TOPLOC bench: proof size, build and verify time per 32-token chunk, Gumbel noise and sampling cost.

    .venv/bin/python bench/toploc.py            # 300 repetitions per figure
    .venv/bin/python bench/toploc.py --quick    # 60 repetitions (a few seconds)

Targets (issue 3): 258 bytes per proof (as the reference); build <= 2 ms per 32 x 4096 chunk (the reference
library takes about 7 ms on this CPU); verify <= 1 ms per chunk (the reference's multithreaded C++ takes
about 1.4 ms). Each chunk is 32 rows of random float32 activations (the bf16 cast is part of the work),
timed on one CPU thread; a figure is the minimum over repetitions, as `timeit` advises (other processes
on a shared machine only ever add time), with the median printed beside it. Verification is timed for one
chunk alone and per chunk when a whole stage (a 64-token prefill and 8 decode chunks) is verified in one
call, as the validator does. The Gumbel noise and the sampler have no target; their cost is reported.

When the reference package `toploc` imports, its build and verify run side by side on the same chunks;
its 0.1.6 wheel is compiled against an older torch and does not import with this one, which is noted.
Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# The repository root instead of bench/, where this file would shadow the reference package `toploc`.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch  # noqa: E402

from node.protocol.job import SamplingParams  # noqa: E402
from node.toploc.activation import build_proofs, verify_proofs  # noqa: E402
from node.toploc.codec import PROOF_BYTES, build_chunk_proofs, chunk_figures  # noqa: E402
from node.toploc.sampling import gumbel_noise, sample_next  # noqa: E402

HIDDEN_SIZES = (576, 2048, 4096)
BUILD_TARGET_MS = 2.0
VERIFY_TARGET_MS = 1.0


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: float | None = None
    median: float | None = None
    exact: bool = False  # the target is an equality

    @property
    def ok(self) -> bool:
        if self.target is None:
            return True
        return self.value == self.target if self.exact else self.value <= self.target

    def line(self) -> str:
        median = f"(median {self.median:.3f})" if self.median is not None else ""
        if self.target is None:
            target, verdict = "(no target)", ""
        else:
            target = f"target {'==' if self.exact else '<='} {self.target:g} {self.unit}"
            verdict = "ok" if self.ok else "MISS"
        return f"{self.name:46} {self.value:>10.3f} {self.unit:6} {median:19} {target:22} {verdict}"


def timed(function: Callable[[], object], repetitions: int, per: int = 1) -> tuple[float, float]:
    """(min, median) milliseconds per call (divided by `per` items), after one warm-up call."""
    function()
    samples = []
    for _ in range(repetitions):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1e3 / per)
    return min(samples), statistics.median(samples)


def reference_module():
    try:
        import toploc  # type: ignore

        toploc.build_proofs_bytes, toploc.verify_proofs_bytes  # noqa: B018 - the API this bench uses
        return toploc
    except Exception as error:  # ImportError, or an undefined symbol from a torch ABI mismatch
        return error


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 repetitions per figure instead of 300")
    args = parser.parse_args()
    repetitions = 60 if args.quick else 300
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    figures: list[Figure] = []
    reference = reference_module()

    for hidden in HIDDEN_SIZES:
        chunk = torch.randn(32, hidden, generator=generator)
        proof = build_chunk_proofs([chunk])[0]
        if hidden == HIDDEN_SIZES[0]:
            figures.append(Figure("proof bytes per 32 tokens", len(proof), "bytes", PROOF_BYTES, exact=True))
        replayed = chunk + 1e-6 * torch.randn(chunk.shape, generator=generator)
        best, median = timed(lambda: build_chunk_proofs([chunk]), repetitions)
        figures.append(Figure(f"build, 32 x {hidden} chunk", best, "ms", BUILD_TARGET_MS, median))
        best, median = timed(lambda: chunk_figures([replayed], [proof]), repetitions)
        figures.append(Figure(f"verify, 32 x {hidden} chunk alone", best, "ms", VERIFY_TARGET_MS, median))

        prefill = torch.randn(64, hidden, generator=generator)
        decode = torch.randn(8 * 32, hidden, generator=generator)
        proofs = build_proofs(prefill, decode)
        assert verify_proofs(prefill, decode, proofs).ok
        best, median = timed(lambda: verify_proofs(prefill, decode, proofs), max(5, repetitions // 8), per=len(proofs))
        figures.append(Figure(f"verify, per chunk of a 9-chunk stage (H={hidden})", best, "ms", VERIFY_TARGET_MS, median))

        if not isinstance(reference, Exception):
            activations = [row.bfloat16() for row in chunk]
            best, median = timed(lambda: reference.build_proofs_bytes(activations, 32, 128, skip_prefill=True), repetitions)
            figures.append(Figure(f"  reference toploc build, 32 x {hidden}", best, "ms", None, median))
            ref_proofs = reference.build_proofs_bytes(activations, 32, 128, skip_prefill=True)
            stacked = chunk.bfloat16()
            best, median = timed(lambda: reference.verify_proofs_bytes(stacked, ref_proofs, 32, 128, skip_prefill=True), repetitions)
            figures.append(Figure(f"  reference toploc verify, 32 x {hidden}", best, "ms", None, median))

    positions = torch.arange(256)
    best, median = timed(lambda: gumbel_noise(1, positions, 49152), max(3, repetitions // 20))
    figures.append(Figure("Gumbel noise, 256 positions x 49,152 vocab", best, "ms", None, median))
    logits = torch.randn(1, 49152, generator=generator) * 3
    params = SamplingParams(temperature=0.7, top_k=50, top_p=0.9)
    best, median = timed(lambda: sample_next(logits, params, 1, torch.tensor([100])), repetitions)
    figures.append(Figure("sample one token (T 0.7, top-k 50, top-p 0.9)", best, "ms", None, median))

    print(f"TOPLOC bench ({'quick, ' if args.quick else ''}{repetitions} repetitions, 1 CPU thread, torch {torch.__version__})")
    for figure in figures:
        print(figure.line())
    if isinstance(reference, Exception):
        print(f"reference toploc: not measured side by side ({type(reference).__name__}: {str(reference)[:120]})")
    misses = [figure for figure in figures if not figure.ok]
    if misses:
        print(f"{len(misses)} target(s) missed: " + ", ".join(f.name for f in misses))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
