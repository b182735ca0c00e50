"""A slash means something: no validator accepts a stake smaller than the slash it would take (issue 15, item 3).

The outbox caps a slash at the stake left, so with the old default minimum of 1 wei a worker staking 1 wei
could cheat and lose 1 wei for a 0.01 ether slash. Registration on a default validator:
tests/orchestration/test_setup.py; the check before each job: tests/orchestration/test_orchestration.py.
"""

from __future__ import annotations

import pytest

from node.validator.config import SLASHES_AT_STAKE, ValidatorConfig
from node.validator.verdict import Tariff


def test_the_default_minimum_stake_pays_several_slashes_in_full():
    config = ValidatorConfig()
    assert config.min_stake_wei == SLASHES_AT_STAKE * config.tariff.slash_wei >= config.tariff.slash_wei
    cheap = ValidatorConfig(tariff=Tariff(slash_wei=10**15))
    assert cheap.min_stake_wei == SLASHES_AT_STAKE * 10**15


def test_a_minimum_stake_below_the_slash_is_refused():
    with pytest.raises(ValueError, match=r"below the slash \(10000000000000000 wei\)"):
        ValidatorConfig(min_stake_wei=1)
    assert ValidatorConfig(min_stake_wei=10**16).min_stake_wei == 10**16  # exactly one slash is allowed
