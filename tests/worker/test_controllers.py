"""A worker's stage server obeys only its validator: the address the validator's GET /health names."""

from __future__ import annotations

import pytest

from node.protocol.signing import SigningKey
from node.worker.errors import WorkerError
from node.worker.stake import controllers_of


def test_the_stage_server_trusts_the_address_the_validator_publishes():
    validator = SigningKey.generate()
    assert controllers_of({"validator": validator.address.lower()}, "http://v") == (validator.address,)


@pytest.mark.parametrize("health", [{}, {"validator": None}, {"validator": "0x1234"}])
def test_a_validator_without_an_address_is_refused_before_anything_starts(health):
    with pytest.raises(WorkerError, match="names no address"):
        controllers_of(health, "http://v")
