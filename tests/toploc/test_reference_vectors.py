"""The codec against the reference TOPLOC vectors (toploc 0.1.6), with the documented differences.

The vectors hold bf16 activations, the reference's proofs and its verifier's figures for variants of the
decode activations: `same`, additive noise (regenerated here exactly: `torch.manual_seed(1000 + seed)`,
`randn(decode.shape) * eps` added in float32, cast to bf16), and `negated`, which the reference passes
because it ignores the sign bit.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from node.toploc.codec import PROOF_BYTES, Proof, build_chunk_proofs, chunk_figures
from node.toploc.polynomial import interpolate
from node.toploc.thresholds import ACTIVATION

VECTORS = Path(__file__).resolve().parent / "data" / "reference.json.gz"  # a copy of shared/toploc-vectors/


def _load_cases() -> list[dict]:
    if not VECTORS.is_file():
        pytest.skip(f"reference vectors not found at {VECTORS}")
    return json.loads(gzip.open(VECTORS).read())["cases"]


def _activations(hex_bits: str, hidden: int) -> torch.Tensor:
    words = np.frombuffer(bytes.fromhex(hex_bits), dtype="<u2").astype(np.int16)
    return torch.from_numpy(words.copy()).view(torch.bfloat16).reshape(-1, hidden)


def _chunks(rows: torch.Tensor) -> list[torch.Tensor]:
    return [rows[i : i + 32] for i in range(0, len(rows), 32)]


def _variant(decode: torch.Tensor, variant: dict, seed: int) -> torch.Tensor:
    if variant["variant"] == "same":
        return decode
    if variant["variant"] == "negated":
        return -decode
    torch.manual_seed(1000 + seed)
    return (decode.float() + variant["eps"] * torch.randn(decode.shape)).bfloat16()


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return _load_cases()


def test_reference_tie_break_gives_the_reference_bytes(cases):
    for case in cases:
        bits = case["activations_bf16_bits"]
        prefill, decode = _activations(bits["prefill"], case["hidden"]), _activations(bits["decode"], case["hidden"])
        with_prefill = build_chunk_proofs([prefill, *_chunks(decode)], tie_break="reference")
        skip_prefill = build_chunk_proofs(_chunks(decode), tie_break="reference")
        assert [p.hex() for p in with_prefill] == case["proofs_with_prefill_hex"]
        assert [p.hex() for p in skip_prefill] == case["proofs_skip_prefill_hex"]
        assert all(len(p) == PROOF_BYTES for p in with_prefill + skip_prefill)


def test_default_tie_break_differs_only_where_the_top_k_is_ambiguous(cases):
    """Where several entries tie at the 128th magnitude the reference's pick is torch's CPU partial sort;
    ours takes the lowest indices. Elsewhere the bytes are the reference's, and either proof verifies
    clean against the other's activations."""
    same, differing = 0, 0
    for case in cases:
        bits = case["activations_bf16_bits"]
        prefill, decode = _activations(bits["prefill"], case["hidden"]), _activations(bits["decode"], case["hidden"])
        chunks = [prefill, *_chunks(decode)]
        ours = build_chunk_proofs(chunks)
        for chunk, mine, theirs in zip(chunks, ours, case["proofs_with_prefill_hex"]):
            magnitude = chunk.reshape(-1).float().abs()
            kth = magnitude.topk(128).values[-1]
            ambiguous = int((magnitude == kth).sum()) > 128 - int((magnitude > kth).sum())
            if mine.hex() == theirs:
                same += 1
            else:
                differing += 1
                assert ambiguous
        for figures in chunk_figures(chunks, [bytes.fromhex(h) for h in case["proofs_with_prefill_hex"]]):
            assert (figures.exp_mismatches, figures.sign_mismatches, figures.mant_err_mean) == (0, 0, 0.0)
        for figures in chunk_figures(chunks, ours, tie_break="reference"):
            assert ACTIVATION.chunk_passes(figures)  # the reference verifier sees our other tie choice
    assert same > 0 and differing > 0


@pytest.mark.slow
def test_reference_figures_are_reproduced(cases):
    for case in cases:
        bits = case["activations_bf16_bits"]
        decode = _activations(bits["decode"], case["hidden"])
        proofs = [bytes.fromhex(h) for h in case["proofs_skip_prefill_hex"]]
        for variant in case["reference_verify_skip_prefill"]:
            activations = _variant(decode, variant, case["seed"])
            figures = chunk_figures(_chunks(activations), proofs, tie_break="reference")
            got = [[f.exp_mismatches, f.mant_err_mean, f.mant_err_median] for f in figures]
            assert got == variant["results"], (case["hidden"], case["seed"], variant["variant"])
            ours = chunk_figures(_chunks(activations), proofs)
            for mine, theirs in zip(ours, variant["results"]):
                assert abs(mine.exp_mismatches - theirs[0]) <= 2


def test_negated_passes_the_reference_and_fails_here(cases):
    for case in cases:
        decode = _activations(case["activations_bf16_bits"]["decode"], case["hidden"])
        proofs = [bytes.fromhex(h) for h in case["proofs_skip_prefill_hex"]]
        figures = chunk_figures(_chunks(-decode), proofs)
        assert all(f.exp_mismatches == 0 and f.mant_err_mean == 0.0 for f in figures)  # what the reference sees
        assert all(f.sign_mismatches == f.points for f in figures)
        assert not any(ACTIVATION.chunk_passes(f) for f in figures)
        assert all(ACTIVATION.chunk_passes(f) for f in chunk_figures(_chunks(decode), proofs))


def test_the_modulus_is_always_applied():
    """The reference's Python verifier evaluates at raw indices; with indices above the modulus that
    reads garbage. Here a chunk of 64 x 4096 (indices up to 262143) verifies clean."""
    chunk = torch.randn(64, 4096, generator=torch.Generator().manual_seed(3)).bfloat16()
    proof = build_chunk_proofs([chunk])[0]
    assert Proof.from_bytes(proof).modulus < chunk.numel()
    (figures,) = chunk_figures([chunk], [proof])
    assert (figures.exp_mismatches, figures.sign_mismatches, figures.mant_err_mean) == (0, 0, 0.0)


def test_proof_bytes_are_parsed_strictly():
    proof = build_chunk_proofs([torch.randn(4, 64)])[0]
    assert Proof.from_bytes(proof).to_bytes() == proof
    for bad in (b"", proof[:-1], b"\x00\x00" + proof[2:], proof[:2] + b"\xff\xff" + proof[4:]):
        with pytest.raises(ValueError):
            Proof.from_bytes(bad)


def test_small_chunks_commit_to_every_entry():
    chunk = torch.randn(1, 64)
    proof = build_chunk_proofs([chunk])[0]
    assert len(proof) == 2 + 2 * 64
    (figures,) = chunk_figures([chunk], [proof])
    assert figures.points == 64 and figures.exp_mismatches == 0


def test_interpolation_passes_through_its_points():
    rng = np.random.default_rng(0)
    x = np.stack([rng.choice(65497, 128, replace=False) for _ in range(3)])
    y = rng.integers(0, 65536, (3, 128))
    from node.toploc.polynomial import evaluate

    assert (evaluate(interpolate(x, y), x) == y % 65497).all()
