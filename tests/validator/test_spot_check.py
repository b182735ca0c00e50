"""Spot checks a worker cannot predict: with `--sample-rate 0.25` and no secret given, a worker that assumed
the old default (an empty secret) knew which of its jobs would be replayed and cheated on the others
(18 cheats, 0 slashes in the audit that found it)."""

import pytest
from eth_hash.auto import keccak

from node.validator.config import ValidatorConfig
from node.validator.spot_check import GuessableSecret, is_replayed, sample_secret

JOBS = [keccak(i.to_bytes(4, "big")) for i in range(400)]


async def test_a_worker_cannot_tell_which_jobs_are_replayed_by_guessing_the_secret(ledger):
    secret = await sample_secret(ledger, b"", 0.25)
    assert len(secret) == 32 and secret != bytes(32)
    guessed = [is_replayed(job, b"", 0.25) for job in JOBS]
    drawn = [is_replayed(job, secret, 0.25) for job in JOBS]
    assert 60 < sum(drawn) < 140  # about a quarter
    wrong = sum(g != d for g, d in zip(guessed, drawn))
    assert wrong > 100, f"the guess was wrong on only {wrong} of {len(JOBS)} jobs"


async def test_validators_on_one_ledger_draw_the_same_jobs(ledger):
    first = await sample_secret(ledger, b"", 0.25)
    assert await sample_secret(ledger, b"", 0.5) == first  # a second validator, or the first one restarted


async def test_a_guessable_secret_is_refused(ledger):
    with pytest.raises(GuessableSecret, match="at least 16 bytes"):
        await sample_secret(ledger, b"hunter2", 0.25)
    assert await sample_secret(ledger, b"s" * 16, 0.25) == b"s" * 16
    with pytest.raises(GuessableSecret):
        ValidatorConfig(sample_rate=0.25)
    ValidatorConfig(sample_rate=1.0)  # replays every job: no secret needed
    ValidatorConfig(sample_rate=0.0)
