"""Which jobs a validator replays when it replays only a fraction of them (`--sample-rate`).

The choice is keccak256(secret || job_id) read as a fraction of 2**256, compared with the rate: the same
job always gets the same answer from the same node (so a restart or a second process agrees), while a
worker, who does not know the secret, cannot tell which of its jobs will be checked. Over k cheating jobs
the chance that at least one is replayed is 1 - (1 - r)**k (docs/validator.md).

The secret is never a guessable one: given (at least 16 bytes), or made at random on first start and kept
in the ledger, so that every validator sharing the ledger draws the same jobs (`sample_secret`).
"""

from __future__ import annotations

from eth_hash.auto import keccak

from ledger.errors import InvalidInput
from ledger.secrets import shared_secret

MIN_SECRET_BYTES = 16
LEDGER_SECRET_NAME = "spot-check"


class GuessableSecret(InvalidInput):
    """A spot-check secret a worker could guess: the message says what to give instead."""


def check_secret(secret: bytes, rate: float) -> None:
    """Raise GuessableSecret when replaying a fraction `rate` of jobs with `secret` lets workers predict which."""
    if 0.0 < rate < 1.0 and len(secret) < MIN_SECRET_BYTES:
        raise GuessableSecret(
            f"a sample rate of {rate:g} needs a secret of at least {MIN_SECRET_BYTES} bytes, or workers can tell "
            "which of their jobs are replayed; give none and one is made and kept in the ledger"
        )


async def sample_secret(ledger, given: bytes, rate: float) -> bytes:
    """The secret behind the spot checks: `given` when there is one, else the ledger's (made on first use)."""
    if given or not 0.0 < rate < 1.0:
        check_secret(given, rate)
        return given

    return await shared_secret(ledger, LEDGER_SECRET_NAME)


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
