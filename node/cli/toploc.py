"""`stagewise toploc ...`: check the codec against the reference vectors, show the thresholds."""

from __future__ import annotations

from pathlib import Path

import click

from node.cli.options import PATH, arguments, help_group

DEFAULT_VECTORS = Path(__file__).resolve().parents[2] / "tests" / "toploc" / "data" / "reference.json.gz"


@help_group("toploc", short_help="TOPLOC proofs: reference vectors, thresholds")
def toploc_group() -> None:
    """TOPLOC proofs: check the codec against the reference vectors, show the thresholds."""


@toploc_group.command(
    "check-vectors", short_help="build and verify the reference TOPLOC vectors (toploc 0.1.6) and print a summary"
)
@click.option("--vectors", type=PATH, default=DEFAULT_VECTORS, help="vectors file")
def check_vectors_command(**_: object) -> int:
    """Rebuild every proof of the reference vectors (reference tie-break: exact bytes; default tie-break:
    bytes equal wherever the top-k is unambiguous), reproduce the reference verifier's figures, and show
    that negated activations, which the reference accepts, fail here."""
    return _check_vectors(arguments())


@toploc_group.command("thresholds", short_help="print the verdict thresholds in force")
def thresholds_command() -> int:
    """Print the verdict thresholds in force."""
    return _thresholds(arguments())


COMMANDS = [toploc_group]


def _check_vectors(args) -> int:
    import gzip
    import json

    import numpy as np
    import torch

    from node.errors import CommandError
    from node.toploc.codec import build_chunk_proofs, chunk_figures
    from node.toploc.thresholds import ACTIVATION

    if not args.vectors.is_file():
        raise CommandError(f"no vectors file at {args.vectors}")
    try:
        cases = json.loads(gzip.open(args.vectors).read())["cases"]
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(f"{args.vectors} is not a vectors file: {error}") from error

    def rows(hex_bits: str, hidden: int) -> torch.Tensor:
        words = np.frombuffer(bytes.fromhex(hex_bits), dtype="<u2").astype(np.int16)
        return torch.from_numpy(words.copy()).view(torch.bfloat16).reshape(-1, hidden)

    failures = 0
    proofs_total = proofs_exact = proofs_default = figures_total = figures_exact = 0
    for case in cases:
        hidden, seed = case["hidden"], case["seed"]
        prefill = rows(case["activations_bf16_bits"]["prefill"], hidden)
        decode = rows(case["activations_bf16_bits"]["decode"], hidden)
        chunks = [decode[i : i + 32] for i in range(0, len(decode), 32)]
        for with_prefill, expected in ((True, case["proofs_with_prefill_hex"]), (False, case["proofs_skip_prefill_hex"])):
            inputs = [prefill, *chunks] if with_prefill else chunks
            exact = [p.hex() for p in build_chunk_proofs(inputs, tie_break="reference")]
            ours = [p.hex() for p in build_chunk_proofs(inputs)]
            proofs_total += len(expected)
            proofs_exact += sum(a == b for a, b in zip(exact, expected))
            proofs_default += sum(a == b for a, b in zip(ours, expected))
        proofs = [bytes.fromhex(h) for h in case["proofs_skip_prefill_hex"]]
        for variant in case["reference_verify_skip_prefill"]:
            name = variant["variant"]
            if name == "same":
                activations = decode
            elif name == "negated":
                activations = -decode
            else:
                torch.manual_seed(1000 + seed)
                activations = (decode.float() + variant["eps"] * torch.randn(decode.shape)).bfloat16()
            parts = [activations[i : i + 32] for i in range(0, len(activations), 32)]
            reference_mode = chunk_figures(parts, proofs, tie_break="reference")
            got = [[f.exp_mismatches, f.mant_err_mean, f.mant_err_median] for f in reference_mode]
            figures_total += 1
            figures_exact += got == variant["results"]
            verdict = all(ACTIVATION.chunk_passes(f) for f in chunk_figures(parts, proofs))
            sign = max(f.sign_mismatches for f in reference_mode)
            print(f"hidden {hidden:5d} seed {seed} {name:11s} reference figures {'match' if got == variant['results'] else 'DIFFER'}"
                  f"  exp {[r[0] for r in got]} mant mean {[round(r[1], 3) for r in got]} sign {sign:3d}  -> {'pass' if verdict else 'fail'}")
            if name == "negated" and verdict:
                failures += 1
    print(f"proofs: {proofs_exact}/{proofs_total} byte-identical with the reference tie-break, "
          f"{proofs_default}/{proofs_total} with the default (lowest-index) tie-break")
    print(f"verifier figures: {figures_exact}/{figures_total} variants reproduce the reference exactly")
    ok = proofs_exact == proofs_total and figures_exact == figures_total and failures == 0
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def _thresholds(args) -> int:
    from dataclasses import asdict

    from node.toploc.thresholds import ACTIVATION, SAMPLING

    print("activation (per 128 compared entries):", asdict(ACTIVATION))
    print("sampling:", asdict(SAMPLING))
    return 0
