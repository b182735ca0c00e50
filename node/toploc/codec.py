"""The TOPLOC v1 activation codec: a 258-byte proof of one chunk of activations, and its raw figures.

A proof commits to the k = 128 largest-magnitude entries of a chunk (flattened, cast to bf16): their
flat indices are reduced by the largest modulus m <= 65497 under which they stay distinct, and the
polynomial of degree < k through the points (index mod m, bf16 bit pattern) over GF(65497) is stored as
`m` then the k coefficients, each big-endian uint16 — byte for byte the reference implementation
(toploc 0.1.6, `ProofPoly.to_bytes`). A verifier selects the top-k of its own recomputed chunk, evaluates
the proof's polynomial at those indices and compares the bf16 fields:

- `exp_mismatches`: entries whose exponent differs (as the reference);
- `mant_err_mean`, `mant_err_median`: |mantissa difference| over the entries whose exponent matches
  (median = the upper middle element, as the reference's C++; both 2**64 when nothing matches);
- `sign_mismatches`: entries whose exponent matches but whose sign differs. The reference ignores the
  sign, so negated activations pass there; here they fail.

Departures from the reference, all off its happy path: indices are always reduced by the modulus before
evaluation (the reference's Python verifier forgets to); ties at the k-th magnitude are broken towards
the lowest flat index when building (the reference leaves them to torch's CPU partial sort, which no
other device reproduces) and towards the proof when verifying (any tied entry is a legitimate top-k
member); `tie_break="reference"` restores the reference's choice for compatibility checks. A chunk with
fewer than k entries commits to all of them (2 + 2 * numel bytes); the reference cannot build those.

Top-k selection runs where the tensor lives (CPU or CUDA); only k indices and values cross to the host,
where the field arithmetic of node.toploc.polynomial runs batched over all chunks at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from node.toploc.polynomial import PRIME, evaluate, injective_modulus, interpolate

TOPK = 128
PROOF_BYTES = 2 + 2 * TOPK  # 258
NO_MATCH = float(2**64)  # the reference's mantissa figures when every exponent mismatches


class ProofFormatError(ValueError):
    """Proof bytes that cannot be a TOPLOC proof (wrong length, modulus or coefficient out of range)."""


@dataclass(frozen=True)
class Proof:
    """A decoded proof: the injective modulus and the polynomial's coefficients (ascending)."""

    modulus: int
    coefficients: tuple[int, ...]

    def to_bytes(self) -> bytes:
        return np.array((self.modulus, *self.coefficients), dtype=">u2").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Proof":
        if not isinstance(data, (bytes, bytearray)) or len(data) < 4 or len(data) % 2:
            raise ProofFormatError("a proof is 2 + 2k bytes with k >= 1")
        words = np.frombuffer(bytes(data), dtype=">u2").astype(np.int64)
        if not 0 < words[0] <= PRIME:
            raise ProofFormatError(f"proof modulus {int(words[0])} is outside [1, {PRIME}]")
        if (words[1:] >= PRIME).any():
            raise ProofFormatError(f"proof coefficient outside GF({PRIME})")
        return cls(int(words[0]), tuple(int(w) for w in words[1:]))


@dataclass(frozen=True)
class ChunkFigures:
    """The raw comparison of one chunk against its proof (see the module docstring)."""

    exp_mismatches: int
    sign_mismatches: int
    mant_err_mean: float
    mant_err_median: float
    points: int  # k: entries compared


def bf16_bits(chunk: torch.Tensor) -> torch.Tensor:
    """The flattened chunk as bf16 bit patterns, int32 in [0, 65536), on the chunk's device."""
    flat = chunk.detach().reshape(-1)
    if flat.dtype != torch.bfloat16:
        flat = flat.to(torch.bfloat16)
    return flat.view(torch.int16).to(torch.int32) & 0xFFFF


TieBreak = Literal["index", "reference"]


def top_entries(bits: torch.Tensor, k: int = TOPK) -> torch.Tensor:
    """Flat indices of the k largest |values| of bf16 bits [n] (all n when n <= k), ties at the k-th
    magnitude going to the lowest indices, in ascending index order: the same set on every device.
    For finite bf16 the order of |value| is the order of `bits & 0x7FFF`."""
    above, tied, need = _boundary(bits, k)
    if above is None:
        return torch.arange(bits.numel(), device=bits.device)
    above[tied[:need]] = True
    return above.nonzero().flatten()


def reference_top_entries(chunk: torch.Tensor, k: int = TOPK) -> torch.Tensor:
    """The reference's selection, `flat.abs().topk(k)` of the bf16 chunk on the CPU: ties fall wherever
    torch's CPU partial sort leaves them. Only for byte-compatibility checks against the reference."""
    flat = chunk.detach().reshape(-1).to(torch.bfloat16).cpu()
    if flat.numel() <= k:
        return torch.arange(flat.numel())
    return flat.abs().topk(k).indices


def _boundary(bits: torch.Tensor, k: int) -> tuple[torch.Tensor | None, torch.Tensor, int]:
    """(mask of entries strictly above the k-th magnitude, indices tied with it, how many ties to take)."""
    if bits.numel() <= k:
        return None, bits.new_empty(0, dtype=torch.int64), 0
    magnitude = bits & 0x7FFF
    threshold = torch.topk(magnitude, k, sorted=False).values.min()
    above = magnitude > threshold
    tied = (magnitude == threshold).nonzero().flatten()
    return above, tied, k - int(above.sum())


def _points(chunk: torch.Tensor, k: int, tie_break: TieBreak) -> tuple[np.ndarray, np.ndarray]:
    bits = bf16_bits(chunk)
    if tie_break == "reference":
        indices = reference_top_entries(chunk, k).to(bits.device)
    elif tie_break == "index":
        indices = top_entries(bits, k)
    else:
        raise ValueError(f"unknown tie_break {tie_break!r}")
    return indices.cpu().numpy().astype(np.int64), bits[indices].cpu().numpy().astype(np.int64)


def build_chunk_proofs(chunks: Sequence[torch.Tensor], k: int = TOPK, tie_break: TieBreak = "index") -> list[bytes]:
    """One proof per chunk (any shape, flattened row-major), interpolated in one batch per size.

    `tie_break="reference"` selects the top-k exactly as toploc 0.1.6 does on the CPU (for compatibility
    checks); the default breaks ties towards the lowest index, the same on every device, so a receiver
    rebuilding a proof from the tensor it received gets the sender's bytes (PROTOCOL I2)."""
    points = [_points(chunk, k, tie_break) for chunk in chunks]
    proofs: list[bytes | None] = [None] * len(points)
    for members in _group_by_size([indices for indices, _ in points]).values():
        xs, ys, moduli = [], [], []
        for member in members:
            indices, bits = points[member]
            modulus = injective_modulus(indices)
            moduli.append(modulus)
            xs.append(indices % modulus)
            ys.append(bits)
        coefficients = interpolate(np.stack(xs), np.stack(ys))
        for member, modulus, row in zip(members, moduli, coefficients):
            proofs[member] = np.concatenate([[modulus], row]).astype(">u2").tobytes()
    return proofs  # type: ignore[return-value]


def build_chunk_proof(chunk: torch.Tensor, k: int = TOPK, tie_break: TieBreak = "index") -> bytes:
    return build_chunk_proofs([chunk], k, tie_break)[0]


MAX_TIED_CANDIDATES = 4096  # beyond this many entries tied at the k-th magnitude, take the lowest indices


def chunk_figures(
    chunks: Sequence[torch.Tensor],
    proofs: Sequence[bytes | Proof],
    k: int = TOPK,
    tie_break: Literal["proof", "reference"] = "proof",
) -> list[ChunkFigures]:
    """Compare recomputed chunks with their proofs; polynomials evaluated in one batch per size.

    Entries tied at the k-th magnitude are all equally "top-k", so by default (`"proof"`) the verifier
    takes, among them, the ones the proof agrees with (then the lowest indices): proofs from any honest
    tie rule, ours or the reference's, verify clean. `"reference"` selects as the reference verifier
    does (torch's CPU top-k), to reproduce its figures exactly. Raises ProofFormatError on malformed
    proof bytes or a proof whose size does not fit the chunk."""
    if len(chunks) != len(proofs):
        raise ValueError(f"{len(chunks)} chunks but {len(proofs)} proofs")
    decoded = [proof if isinstance(proof, Proof) else Proof.from_bytes(proof) for proof in proofs]
    if tie_break == "reference":
        points = [_points(chunk, k, "reference") for chunk in chunks]
    elif tie_break == "proof":
        points = [_proof_aware_points(chunk, proof, k) for chunk, proof in zip(chunks, decoded)]
    else:
        raise ValueError(f"unknown tie_break {tie_break!r}")
    for (indices, _), proof in zip(points, decoded):
        if len(proof.coefficients) != len(indices):
            raise ProofFormatError(f"proof has {len(proof.coefficients)} points, the chunk needs {len(indices)}")
    figures: list[ChunkFigures | None] = [None] * len(points)
    for members in _group_by_size([indices for indices, _ in points]).values():
        coefficients = np.array([decoded[m].coefficients for m in members], dtype=np.int64)
        xs = np.stack([points[m][0] % decoded[m].modulus for m in members])
        claimed = evaluate(coefficients, xs)
        actual = np.stack([points[m][1] for m in members])
        for member, row_claimed, row_actual in zip(members, claimed, actual):
            figures[member] = _compare(row_claimed, row_actual)
    return figures  # type: ignore[return-value]


def _proof_aware_points(chunk: torch.Tensor, proof: Proof, k: int) -> tuple[np.ndarray, np.ndarray]:
    bits = bf16_bits(chunk)
    above, tied, need = _boundary(bits, k)
    if above is None:
        indices = torch.arange(bits.numel(), device=bits.device)
    elif need == tied.numel() or tied.numel() > MAX_TIED_CANDIDATES:
        above[tied[:need]] = True
        indices = above.nonzero().flatten()
    else:
        tied_np = tied.cpu().numpy().astype(np.int64)
        tied_bits = bits[tied].cpu().numpy().astype(np.int64)
        claimed = evaluate(np.array(proof.coefficients, dtype=np.int64), tied_np % proof.modulus)
        agrees = (claimed & 0x7FFF) == (tied_bits & 0x7FFF)  # all tied share one magnitude
        order = np.lexsort((tied_np, ~agrees))  # the ones the proof committed to first, then lowest index
        above[torch.as_tensor(tied_np[order[:need]], device=bits.device)] = True
        indices = above.nonzero().flatten()
    return indices.cpu().numpy().astype(np.int64), bits[indices].cpu().numpy().astype(np.int64)


def _compare(claimed: np.ndarray, actual: np.ndarray) -> ChunkFigures:
    exp_claimed, exp_actual = (claimed >> 7) & 0xFF, (actual >> 7) & 0xFF
    exp_match = exp_claimed == exp_actual
    errors = np.sort(np.abs((claimed & 0x7F) - (actual & 0x7F))[exp_match])
    if errors.size:
        mean, median = float(errors.mean()), float(errors[errors.size // 2])
    else:
        mean = median = NO_MATCH
    return ChunkFigures(
        exp_mismatches=int((~exp_match).sum()),
        sign_mismatches=int((((claimed >> 15) != (actual >> 15)) & exp_match).sum()),
        mant_err_mean=mean,
        mant_err_median=median,
        points=int(claimed.size),
    )


def _group_by_size(index_sets: list[np.ndarray]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for index, indices in enumerate(index_sets):
        groups.setdefault(len(indices), []).append(index)
    return groups
