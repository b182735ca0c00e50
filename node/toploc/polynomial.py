"""Polynomials over GF(65497), the field of TOPLOC proofs: interpolation, evaluation, injective moduli.

A proof is the unique polynomial of degree < k through k points (index mod m, bf16 bits of the value),
so interpolation must give exactly the coefficients the reference implementation gives; the polynomial is
unique, so any correct method does. Here everything is batched numpy with no loop over points:

- interpolation is Lagrange in matrix form: c = sum_i v_i L_i with L_i = M / (x - x_i),
  M(x) = prod_j (x - x_j) built by a product tree, and v_i = y_i / M'(x_i) (M'(x_i) is
  prod_{j != i}(x_i - x_j)). Synthetic division gives [x^j] L_i = sum_t x_i^t m_{t+j+1}, so the coefficients are
  c = (v @ P) @ H: the power matrix P[i, t] = x_i^t and the Hankel matrix H[t, j] = m_{t+j+1}, two
  vector-matrix products;
- evaluation is the power matrix times the coefficients.

All in int64 without overflow: entries are < 2**16, so every product is < 2**32 and every sum of k = 128
products is < 2**39.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

PRIME = 65497  # the reference's field; bf16 bit patterns (< 2**16) fit, NaN patterns >= 65497 wrap


@lru_cache(maxsize=1)
def inverse_table() -> np.ndarray:
    """inverse_table()[a] = a^-1 mod PRIME (Fermat: a^(p-2)), for every a; entry 0 is 0."""
    base = np.arange(PRIME, dtype=np.int64)
    result = np.ones(PRIME, dtype=np.int64)
    exponent = PRIME - 2
    while exponent:
        if exponent & 1:
            result = mod_prime(result * base)
        base = mod_prime(base * base)
        exponent >>= 1
    result[0] = 0
    result.setflags(write=False)
    return result


def injective_modulus(indices: np.ndarray, start: int = PRIME, batch: int = 32) -> int:
    """The largest m <= start such that the indices are pairwise distinct mod m (the reference's rule)."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(np.unique(indices)) != len(indices):
        raise ValueError("indices must be distinct")
    top = start
    while top > 0:
        moduli = np.arange(top, max(top - batch, 0), -1, dtype=np.int64)
        residues = np.sort(indices[None, :] - (indices[None, :] // moduli[:, None]) * moduli[:, None], axis=1)
        injective = ~(np.diff(residues, axis=1) == 0).any(axis=1)
        if injective.any():
            return int(moduli[np.argmax(injective)])
        top -= batch
    raise ValueError("no injective modulus found")


def mod_prime(values: np.ndarray) -> np.ndarray:
    """values mod PRIME in [0, PRIME). numpy's floor division by a scalar is far faster than its `%`."""
    return values - (values // PRIME) * PRIME


def power_matrix(x: np.ndarray, count: int) -> np.ndarray:
    """x [..., Q] -> [..., Q, count] with entry t = x^t mod PRIME (int64), by doubling: log2(count) steps."""
    x = mod_prime(np.asarray(x, dtype=np.int64))
    powers = np.empty(x.shape + (count,), dtype=np.int64)
    powers[..., 0] = 1
    if count > 1:
        powers[..., 1] = x
    filled = 2
    while filled < count:
        step = mod_prime(powers[..., filled // 2] * powers[..., filled // 2])  # x^filled, filled a power of 2
        width = min(filled, count - filled)
        powers[..., filled : filled + width] = mod_prime(powers[..., :width] * step[..., None])
        filled += width
    return powers


def _poly_products(polys: np.ndarray) -> np.ndarray:
    """The product of the n polynomials in each row: polys [B, n, L] (ascending coefficients) -> [B, D+1]."""
    batch = polys.shape[0]
    while polys.shape[1] > 1:
        if polys.shape[1] % 2:
            one = np.zeros_like(polys[:, :1])
            one[..., 0] = 1
            polys = np.concatenate([polys, one], axis=1)
        length = polys.shape[-1]
        outer = polys[:, 0::2, :, None] * polys[:, 1::2, None, :]  # < 2**32
        # Sum the anti-diagonals: shift row i right by i (the skew trick), then add the rows up.
        skew = np.zeros(outer.shape[:-1] + (2 * length,), dtype=np.int64)
        skew[..., :length] = outer
        skew = skew.reshape(batch, -1, length * 2 * length)[..., : length * (2 * length - 1)]
        polys = mod_prime(skew.reshape(batch, -1, length, 2 * length - 1).sum(axis=-2))
    return polys[:, 0]


def interpolate(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients (ascending, [B, k] int64 in [0, PRIME)) of the polynomials of degree < k through
    the points (x[b, i], y[b, i]); x values distinct mod PRIME within a row. Accepts [k] inputs too."""
    x = np.asarray(x, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    single = x.ndim == 1
    x, y = mod_prime(np.atleast_2d(x)), mod_prime(np.atleast_2d(y))
    batch, k = x.shape
    factors = np.ones((batch, k, 2), dtype=np.int64)  # (x - x_j) = [-x_j, 1]
    factors[..., 0] = mod_prime(-x)
    monic = _poly_products(factors)[:, : k + 1]  # M(x) = prod_j (x - x_j), degree k
    powers = power_matrix(x, k)  # [b, i, t] = x_i^t, shared by the two products below
    derivative = mod_prime(monic[:, 1:] * np.arange(1, k + 1))  # M'(x), degree k - 1
    denominators = mod_prime(np.einsum("bit,bt->bi", powers, derivative))  # M'(x_i) = prod_{j != i} (x_i - x_j)
    if (denominators == 0).any():
        raise ValueError("interpolation points must be distinct mod PRIME")
    weighted = mod_prime(y * inverse_table()[denominators])  # v_i
    # c_j = sum_i v_i [x^j] L_i(x) = sum_t (sum_i v_i x_i^t) m_{t+j+1}: two vector-matrix products.
    moments = _mod_matvec(weighted, powers)  # [b, t] = sum_i v_i x_i^t
    padded = np.concatenate([monic[:, 1:], np.zeros((batch, k), dtype=np.int64)], axis=1)
    hankel = np.lib.stride_tricks.sliding_window_view(padded, k, axis=1)[:, :k, :]  # [b, t, j] = m[t+j+1]
    coefficients = _mod_matvec(moments, hankel)
    return coefficients[0] if single else coefficients


def _mod_matvec(vectors: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """(vectors[b] @ matrices[b]) mod PRIME in exact int64: entries < 2**16, k terms < 2**(32 + log2 k)."""
    return mod_prime(np.einsum("bi,bij->bj", vectors, matrices))


BABY_STEPS = 16  # powers x^0..x^15 per point; the rest by Horner in x^16 (baby-step giant-step)


def _baby_giant(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(x^0..x^(b-1) [..., b], x^b [...], number of blocks of b coefficients covering k)."""
    baby = min(BABY_STEPS, k)
    powers = power_matrix(x, baby + 1)
    return powers[..., :baby], powers[..., baby], -(-k // baby)


def evaluate(coefficients: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Values mod PRIME of the polynomials coefficients [B, k] at points x [B, Q] -> [B, Q] int64.

    Baby-step giant-step: each block of 16 coefficients is a small matrix product with x^0..x^15, and
    Horner in x^16 joins the blocks, so the work is ~16 + k/16 products per point, not k."""
    coefficients = np.asarray(coefficients, dtype=np.int64)
    single = coefficients.ndim == 1
    coefficients, x = np.atleast_2d(coefficients), mod_prime(np.atleast_2d(np.asarray(x, dtype=np.int64)))
    k = coefficients.shape[-1]
    small, giant, blocks = _baby_giant(x, k)
    padded = np.zeros((coefficients.shape[0], blocks * small.shape[-1]), dtype=np.int64)
    padded[:, :k] = coefficients
    partial = mod_prime(np.einsum("bqs,bns->bqn", small, padded.reshape(coefficients.shape[0], blocks, -1)))
    values = partial[..., -1]
    for block in range(blocks - 2, -1, -1):
        values = mod_prime(values * giant + partial[..., block])
    return values[0] if single else values
