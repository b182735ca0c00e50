"""--sample-rate: which jobs are replayed, and what that does to the chance of catching a cheater."""

import os

import pytest

from node.validator.spot_check import catch_probability, is_replayed


def test_the_choice_is_deterministic_per_secret_and_near_the_rate():
    ids = [os.urandom(32) for _ in range(4000)]
    chosen = [is_replayed(i, b"secret", 0.25) for i in ids]
    assert chosen == [is_replayed(i, b"secret", 0.25) for i in ids]  # a restart chooses the same jobs
    assert 0.21 < sum(chosen) / len(ids) < 0.29
    other = [is_replayed(i, b"another secret", 0.25) for i in ids]
    assert other != chosen  # without the secret a worker cannot tell which jobs are checked
    assert all(is_replayed(i, b"s", 1.0) for i in ids[:50]) and not any(is_replayed(i, b"s", 0.0) for i in ids[:50])


def test_catch_probability_over_k_cheating_jobs():
    assert catch_probability(0.1, 1) == pytest.approx(0.1)
    assert catch_probability(0.1, 10) == pytest.approx(1 - 0.9**10)
    assert catch_probability(0.05, 50) > 0.92
    assert catch_probability(1.0, 1) == 1.0
