"""Validator fixtures: one tiny model per session, a group of three staked keys, a ledger, a node, a client."""

from __future__ import annotations

import os

import pytest
from aiohttp.test_utils import TestClient, TestServer

from node.protocol.receipts import ReceiptDomain
from node.protocol.signing import SigningKey
from node.validator.config import ValidatorConfig
from tests.validator.factory import LAYERS, Group

STAKE = 10**18
ADMIN_TOKEN = "test-admin-token"
TEST_DOMAIN = ReceiptDomain(chain_id=31337, verifying_contract="0x" + "ab" * 20)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    from node.pipeline.tiny import tiny_model_dir

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return tiny_model_dir("llama", 11, tmp_path_factory.mktemp("models") / "tiny-llama", num_layers=LAYERS)


@pytest.fixture(scope="session")
def model_id(model_dir):
    from node.pipeline.weights import model_id

    return model_id(model_dir)


@pytest.fixture(scope="session")
def worker_keys():
    return tuple(SigningKey((0x1000 + i).to_bytes(32, "big")) for i in range(3))


@pytest.fixture
def group(model_dir, model_id, worker_keys):
    return Group(model_dir, model_id, worker_keys, TEST_DOMAIN)


def make_config(model_dir, **overrides) -> ValidatorConfig:
    values = dict(
        model_dirs=(model_dir,),
        admin_token=ADMIN_TOKEN,
        epoch_seconds=3600,
        epoch_entries=10**6,
        claim_lease_seconds=30,
        validator_id="test-validator",
    )
    values.update(overrides)
    return ValidatorConfig(**values)


@pytest.fixture
async def ledger(db_url):
    from ledger.store import Ledger

    ledger = await Ledger.open(db_url)
    yield ledger
    await ledger.close()


@pytest.fixture
async def sqlite_ledger(sqlite_url):
    """A ledger on SQLite only, for tests about something other than the database."""
    from ledger.store import Ledger

    ledger = await Ledger.open(sqlite_url)
    yield ledger
    await ledger.close()


async def stake_all(ledger, keys, amount: int = STAKE) -> None:
    for key in keys:
        await ledger.set_stake(key.address, amount)


@pytest.fixture
async def node(ledger, model_dir, worker_keys):
    """A validator node without a chain, its workers staked in the ledger; replays every job."""
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode

    await stake_all(ledger, worker_keys)
    return ValidatorNode(make_config(model_dir), ledger, domain=TEST_DOMAIN, models=ReplayModels([model_dir]))


@pytest.fixture
async def client(node):
    from node.validator.app import build_app

    client = TestClient(TestServer(build_app(node)))
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture(scope="session")
def anvil():
    from ledger.chain.embedded import AnvilNode

    with AnvilNode(accounts=3) as node:
        yield node


def deploy_and_stake(chain, worker_keys, amount: int = STAKE):
    """A fresh staking contract whose owner (dev key 0) is the validator, and three staked workers."""
    owner = chain.dev_keys[0]
    if chain.backend != "embedded":
        chain.deploy(owner, treasury=chain.dev_keys[1].address, validators=[owner.address])
    for key in worker_keys:
        chain.fund(key.address, 2 * amount)
        chain.stake(key, amount)
    return owner


@pytest.fixture(params=["embedded", "anvil"])
def chain(request, worker_keys):
    """A chain (in-process EVM or anvil) with a fresh contract and the three workers staked."""
    from ledger.chain.client import ChainClient

    if request.param == "embedded":
        client = ChainClient.embedded()
    else:
        node = request.getfixturevalue("anvil")
        client = ChainClient.connect(node.url, dev_keys=node.keys)
    deploy_and_stake(client, worker_keys)
    return client
