"""Bundles reach a running validator: retried while it is down, recorded once when delivered twice."""

import asyncio
import hashlib

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from node.protocol.bundle import Bundle, expected_proof_count
from node.protocol.job import JobSpec, SamplingParams, StageAssignment
from node.protocol.receipts import ReceiptDomain
from node.protocol.signing import SigningKey
from node.worker.config import WorkerConfig
from node.worker.errors import WorkerError
from node.worker.receipt_book import ReceiptBook
from node.worker.stake import chain_info
from node.worker.validator_client import ValidatorClient, ValidatorRefused
from tests.loopback import free_port

DOMAIN = ReceiptDomain(31337, "0x" + "ab" * 20)
KEYS = [SigningKey(hashlib.sha256(f"submit-{i}".encode()).digest()) for i in range(3)]
OUTPUT = (5, 9, 3, 7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from node.pipeline.tiny import tiny_model_dir

    return tiny_model_dir("llama", seed=5, path=tmp_path_factory.mktemp("tiny"), num_layers=6)


def signed_bundle(model_dir, seed: int = 1) -> Bundle:
    from node.pipeline.weights import model_id

    spec = JobSpec(
        model_id=model_id(model_dir),
        prompt_token_ids=(1, 2, 3, 4),
        sampling=SamplingParams(max_new_tokens=8),
        seed=seed,
        group_id="group-1",
        stages=tuple(StageAssignment(k.address, 2 * i, 2 * i + 2) for i, k in enumerate(KEYS)),
    )
    proofs = [bytes([i]) * 258 for i in range(expected_proof_count(len(OUTPUT)))]
    stages = tuple(ReceiptBook(k, DOMAIN).sign(spec, i, OUTPUT, proofs).stage for i, k in enumerate(KEYS))
    return Bundle(spec, stages, OUTPUT)


@pytest.fixture
async def validator_app(db_url, model_dir):
    from ledger.store import Ledger
    from node.validator.app import build_app
    from node.validator.config import ValidatorConfig
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode

    ledger = await Ledger.open(db_url)
    for key in KEYS:
        await ledger.set_stake(key.address, 10**18)
    node = ValidatorNode(
        ValidatorConfig(model_dirs=(model_dir,), min_stake_wei=10**18), ledger, domain=DOMAIN,
        models=ReplayModels([model_dir]), rpc_url="http://127.0.0.1:8545",
    )
    yield build_app(node, dashboard=False)
    await ledger.close()


async def test_a_bundle_delivered_twice_is_recorded_once(validator_app, model_dir):
    bundle = signed_bundle(model_dir)
    async with TestServer(validator_app) as server, aiohttp.ClientSession() as session:
        client = ValidatorClient(str(server.make_url("")), session)
        first = await client.submit_bundle(bundle)
        second = await client.submit_bundle(bundle)
        assert first == {"job_id": bundle.job_id_hex, "status": "queued"}
        assert second == {"job_id": bundle.job_id_hex, "status": "duplicate"}
        jobs = await client.request("GET", "/v1/jobs")
        assert [job["job_id"] for job in jobs["items"]] == [bundle.job_id_hex]


async def test_delivery_is_retried_until_the_validator_is_up(validator_app, model_dir):
    port = free_port()
    bundle = signed_bundle(model_dir, seed=2)
    async with aiohttp.ClientSession() as session:
        client = ValidatorClient(f"http://127.0.0.1:{port}", session)
        delivery = asyncio.create_task(client.submit_bundle(bundle, attempts=10, first_delay_s=0.1, max_delay_s=0.2))
        await asyncio.sleep(0.5)
        assert not delivery.done()
        async with TestServer(validator_app, port=port):
            assert (await asyncio.wait_for(delivery, 10))["status"] == "queued"


async def test_a_refused_bundle_is_not_retried(validator_app, model_dir):
    bundle = signed_bundle(model_dir, seed=3)
    forged = Bundle(bundle.spec, (bundle.stages[1],) + bundle.stages[1:], bundle.output_token_ids)
    async with TestServer(validator_app) as server, aiohttp.ClientSession() as session:
        client = ValidatorClient(str(server.make_url("")), session)
        with pytest.raises(ValidatorRefused, match="400 malformed_bundle.*stages must be in order"):
            await client.submit_bundle(forged, attempts=5, first_delay_s=5)


async def test_delivery_gives_up_with_a_clear_message():
    async with aiohttp.ClientSession() as session:
        client = ValidatorClient(f"http://127.0.0.1:{free_port()}", session)
        spec_bundle = signed_bundle_for_no_model()
        with pytest.raises(WorkerError, match="not delivered after 2 attempts: cannot reach the validator"):
            await client.submit_bundle(spec_bundle, attempts=2, first_delay_s=0.01)


def signed_bundle_for_no_model() -> Bundle:
    spec = JobSpec(
        model_id="0x" + "ee" * 32, prompt_token_ids=(1,), sampling=SamplingParams(max_new_tokens=4), seed=1,
        group_id="g", stages=(StageAssignment(KEYS[0].address, 0, 2),),
    )
    stage = ReceiptBook(KEYS[0], DOMAIN).sign(spec, 0, (4, 5), [b"\x01" * 258]).stage
    return Bundle(spec, (stage,), (4, 5))


async def test_the_worker_learns_the_chain_from_the_validator(validator_app):
    async with TestServer(validator_app) as server, aiohttp.ClientSession() as session:
        health = await ValidatorClient(str(server.make_url("")), session).health()
    info = chain_info(WorkerConfig(keystore=None, validator_url="x"), health)
    assert (info.rpc_url, info.contract, info.min_stake_wei, info.chain_id) == (
        "http://127.0.0.1:8545", DOMAIN.verifying_contract, 10**18, 31337
    )
    flags = chain_info(WorkerConfig(keystore=None, validator_url="x", rpc_url="http://other", min_stake_wei=5), health)
    assert (flags.rpc_url, flags.min_stake_wei) == ("http://other", 5)
    with pytest.raises(WorkerError, match="pass --rpc-url"):
        chain_info(WorkerConfig(keystore=None, validator_url="x"), {"status": "ok"})


async def test_a_worker_started_before_its_validator_waits_for_it_then_gives_up_saying_so(validator_app, caplog):
    # Issue 18, item 9: a worker started before its validator quit at once.
    from node.worker.run import Worker

    port = free_port()
    config = WorkerConfig(keystore=None, validator_url=f"http://127.0.0.1:{port}", validator_wait_s=30)
    async with aiohttp.ClientSession() as session:
        waiting = asyncio.create_task(Worker(config, KEYS[0], session).validator_health())
        await asyncio.sleep(1.5)
        assert not waiting.done() and "trying again in" in caplog.text
        async with TestServer(validator_app, port=port):
            assert "chain" in await asyncio.wait_for(waiting, 10)
        impatient = WorkerConfig(keystore=None, validator_url=f"http://127.0.0.1:{port}", validator_wait_s=1.5)
        with pytest.raises(WorkerError, match=r"cannot reach the validator.*gave up after waiting 1.5 s \(--validator-wait\)"):
            await Worker(impatient, KEYS[0], session).validator_health()
