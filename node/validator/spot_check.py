"""Which jobs a validator replays when it replays only a fraction of them (`--sample-rate`).

The choice is keccak256(secret || job_id) read as a fraction of 2**256, compared with the rate: the same
job always gets the same answer from the same node (so a restart or a second process agrees), while a
worker, who does not know the secret, cannot tell which of its jobs will be checked. Over k cheating jobs
the chance that at least one is replayed is 1 - (1 - r)**k (docs/validator.md).
"""

from __future__ import annotations

from eth_hash.auto import keccak


def is_replayed(job_id: bytes, secret: bytes, rate: float) -> bool:
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    draw = int.from_bytes(keccak(secret + job_id), "big")
    return draw < int(rate * (1 << 256))


def catch_probability(rate: float, cheating_jobs: int) -> float:
    """The chance that at least one of `cheating_jobs` independent cheating jobs is replayed."""
    return 1.0 - (1.0 - rate) ** cheating_jobs
