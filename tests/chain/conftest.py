"""Chain fixtures: the same contract suite runs on the in-process EVM and on anvil.

`chain` is a ChainClient with a freshly deployed StagewiseStaking (unbonding delay 100 s): owner and only
validator `dev_keys[0]`, treasury `dev_keys[1]`, workers `dev_keys[2:]`. Embedded chains are fresh per
test; one anvil process serves the whole session, with a fresh contract per test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger.chain.client import ChainClient
from ledger.chain.embedded import AnvilNode

UNBONDING_DELAY = 100


@pytest.fixture(scope="session")
def anvil() -> Iterator[AnvilNode]:
    with AnvilNode(accounts=6) as node:
        yield node


def deployed_on_anvil(node: AnvilNode) -> ChainClient:
    client = ChainClient.connect(node.url, dev_keys=node.keys)
    owner = node.keys[0]
    client.deploy(owner, treasury=node.keys[1].address, unbonding_delay=UNBONDING_DELAY, validators=[owner.address])
    return client


@pytest.fixture(params=["embedded", "anvil"])
def chain(request) -> ChainClient:
    if request.param == "embedded":
        return ChainClient.embedded(unbonding_delay=UNBONDING_DELAY)
    return deployed_on_anvil(request.getfixturevalue("anvil"))
