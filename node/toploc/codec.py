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

from ledger.errors import InvalidInput
from node.toploc.polynomial import PRIME, evaluate, injective_modulus, interpolate

TOPK = 128
PROOF_BYTES = 2 + 2 * TOPK  # 258
NO_MATCH = float(2**64)  # the reference's mantissa figures when every exponent mismatches


class ProofFormatError(InvalidInput):
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
        return cls(int(words[0]), tuple(words[1:].tolist()))


@dataclass(frozen=True)
class ChunkFigures:
    """The raw comparison of one chunk against its proof (see the module docstring)."""

    exp_mismatches: int
    sign_mismatches: int
    mant_err_mean: float
    mant_err_median: float
    points: int  # k: entries compared


TieBreak = Literal["index", "reference"]


@dataclass(frozen=True)
class _Selection:
    """The top-k of one chunk before ties are settled: every entry strictly above the k-th magnitude,
    the entries tied with it (ascending index), how many of those belong in the top-k, and the bf16
    words (uint16) to read values from."""

    above: np.ndarray
    tied: np.ndarray
    need: int
    words: np.ndarray | torch.Tensor  # numpy for CPU chunks, a device tensor otherwise

    def values(self, indices: np.ndarray) -> np.ndarray:
        if isinstance(self.words, np.ndarray):
            return self.words[indices].astype(np.int64)
        picked = self.words[torch.as_tensor(indices, device=self.words.device)]
        return picked.cpu().numpy().astype(np.int64) & 0xFFFF

    def settle(self, chosen_ties: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.sort(np.concatenate([self.above, chosen_ties]))
        return indices, self.values(indices)


def _bf16_words(chunk: torch.Tensor) -> np.ndarray | torch.Tensor:
    """The flattened chunk's bf16 bit patterns: uint16 numpy for a CPU chunk, int16 on its device else."""
    flat = chunk.detach().reshape(-1)
    if flat.dtype != torch.bfloat16:
        flat = flat.to(torch.bfloat16)
    words = flat.view(torch.int16)
    return words.numpy().view(np.uint16) if words.device.type == "cpu" else words


def _select(chunk: torch.Tensor, k: int) -> _Selection:
    """Split the chunk's top-k by magnitude (for finite bf16 the order of |value| is the order of
    `bits & 0x7FFF`) into the certain part and the tied boundary. CPU chunks go through numpy; device
    chunks stay on the device until only the selected entries are left."""
    return _select_words(_bf16_words(chunk), k)


def _select_words(words: np.ndarray | torch.Tensor, k: int) -> _Selection:
    n = words.shape[0]
    if n <= k:
        return _Selection(np.arange(n, dtype=np.int64), np.empty(0, dtype=np.int64), 0, words)
    if isinstance(words, np.ndarray):
        # Introselect finds the k-th largest magnitude; one pass picks the entries at or above it, in
        # index order.
        magnitude = words & np.uint16(0x7FFF)
        threshold = np.partition(magnitude, n - k)[n - k]
        candidates = np.flatnonzero(magnitude >= threshold)
        candidate_magnitude = magnitude[candidates]
        above = candidates[candidate_magnitude > threshold]
        tied = candidates[candidate_magnitude == threshold]
        return _Selection(above, tied, k - above.size, words)
    magnitude = words.to(torch.int32) & 0x7FFF
    threshold = torch.topk(magnitude, k, sorted=False).values.min()
    above = (magnitude > threshold).nonzero().flatten().cpu().numpy().astype(np.int64)
    tied = (magnitude == threshold).nonzero().flatten().cpu().numpy().astype(np.int64)
    return _Selection(above, tied, k - above.size, words)


def top_entries(chunk: torch.Tensor, k: int = TOPK) -> np.ndarray:
    """Flat indices (ascending) of the k largest |values| of the chunk as bf16, all of them when it has
    at most k entries, ties at the k-th magnitude going to the lowest indices: the same on every device."""
    selection = _select(chunk, k)
    return selection.settle(selection.tied[: selection.need])[0]


def reference_top_entries(chunk: torch.Tensor, k: int = TOPK) -> np.ndarray:
    """The reference's selection, `flat.abs().topk(k)` of the bf16 chunk on the CPU: ties fall wherever
    torch's CPU partial sort leaves them. Only for byte-compatibility checks against the reference."""
    flat = chunk.detach().reshape(-1).to(torch.bfloat16).cpu()
    if flat.numel() <= k:
        return np.arange(flat.numel(), dtype=np.int64)
    return np.sort(flat.abs().topk(k).indices.numpy()).astype(np.int64)


def _points(chunk: torch.Tensor, k: int, tie_break: TieBreak) -> tuple[np.ndarray, np.ndarray]:
    if tie_break == "reference":
        indices = reference_top_entries(chunk, k)
        words = _bf16_words(chunk.cpu())
        return indices, words[indices].astype(np.int64)
    if tie_break == "index":
        selection = _select(chunk, k)
        return selection.settle(selection.tied[: selection.need])
    raise ValueError(f"unknown tie_break {tie_break!r}")


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
    if tie_break not in ("proof", "reference"):
        raise ValueError(f"unknown tie_break {tie_break!r}")
    decoded = [proof if isinstance(proof, Proof) else Proof.from_bytes(proof) for proof in proofs]
    queries = [_verification_query(chunk, k, tie_break) for chunk in chunks]
    for query, proof in zip(queries, decoded):
        if len(proof.coefficients) != query.points:
            raise ProofFormatError(f"proof has {len(proof.coefficients)} points, the chunk needs {query.points}")
    # One batched evaluation per polynomial size, at every index a chunk may use (ties included).
    claimed_all: list[np.ndarray | None] = [None] * len(queries)
    for members in _group_by_size([np.empty(len(decoded[m].coefficients)) for m in range(len(decoded))]).values():
        width = max(queries[m].indices.size for m in members)
        xs = np.zeros((len(members), width), dtype=np.int64)
        for row, member in enumerate(members):
            xs[row, : queries[member].indices.size] = queries[member].indices % decoded[member].modulus
        coefficients = np.array([decoded[m].coefficients for m in members], dtype=np.int64)
        for member, values in zip(members, evaluate(coefficients, xs)):
            claimed_all[member] = values[: queries[member].indices.size]
    return [_compare(*query.settle(claimed)) for query, claimed in zip(queries, claimed_all)]  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Query:
    """Where a verifier evaluates a proof: the certain top-k entries, then (if the boundary is ambiguous)
    every entry tied at the k-th magnitude, of which `need` are kept — those the proof agrees with first."""

    indices: np.ndarray
    actual: np.ndarray
    certain: int  # the first `certain` indices are in the top-k for sure
    need: int  # how many of the remaining (tied) ones complete it

    @property
    def points(self) -> int:
        return self.certain + self.need

    def settle(self, claimed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.certain + self.need == self.indices.size:
            return claimed, self.actual
        tied_claimed, tied_actual = claimed[self.certain :], self.actual[self.certain :]
        agrees = (tied_claimed & 0x7FFF) == (tied_actual & 0x7FFF)  # all tied share one magnitude
        order = np.lexsort((self.indices[self.certain :], ~agrees))[: self.need]
        return (
            np.concatenate([claimed[: self.certain], tied_claimed[order]]),
            np.concatenate([self.actual[: self.certain], tied_actual[order]]),
        )


def _verification_query(chunk: torch.Tensor, k: int, tie_break: str) -> _Query:
    if tie_break == "reference":
        indices, actual = _points(chunk, k, "reference")
        return _Query(indices, actual, indices.size, 0)
    selection = _select(chunk, k)
    tied, need = selection.tied, selection.need
    if need == tied.size or tied.size > MAX_TIED_CANDIDATES:
        indices, actual = selection.settle(tied[:need])
        return _Query(indices, actual, indices.size, 0)
    indices = np.concatenate([selection.above, tied])
    return _Query(indices, selection.values(indices), selection.above.size, need)


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
