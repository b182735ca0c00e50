"""Workers sign receipts, serve them to each other over HTTP, and the last stage assembles a bundle the
validator's checks accept; workers register and heartbeat against the orchestrator's real routes."""

import asyncio
import hashlib
import json

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from node.protocol.bundle import check_receipts, check_signers, expected_proof_count
from node.protocol.job import JobSpec, SamplingParams, StageAssignment
from node.protocol.receipts import ReceiptDomain
from node.protocol.signing import SigningKey
from node.worker.bundle_assembly import assemble_bundle, fetch_peer_stage
from node.worker.config import WorkerConfig
from node.worker.errors import WorkerError
from node.worker.receipt_book import ReceiptBook, receipt_routes
from node.worker.run import Worker
from node.worker.validator_client import ValidatorClient, ValidatorRefused, ValidatorUnreachable

DOMAIN = ReceiptDomain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
KEYS = [SigningKey(hashlib.sha256(f"w{i}".encode()).digest()) for i in range(3)]
OUTPUT = tuple(range(50, 90))


def spec() -> JobSpec:
    return JobSpec(
        model_id="0x" + "cd" * 32,
        prompt_token_ids=(3, 4, 5),
        sampling=SamplingParams(max_new_tokens=64),
        seed=99,
        group_id="g-1",
        stages=tuple(StageAssignment(k.address, 2 * i, 2 * i + 2) for i, k in enumerate(KEYS)),
    )


def proofs(stage: int) -> list[bytes]:
    return [hashlib.sha256(f"{stage}:{i}".encode()).digest() * 8 + b"\x00\x01" for i in range(expected_proof_count(len(OUTPUT)))]


async def serve(book: ReceiptBook) -> TestServer:
    app = web.Application()
    app.add_routes(receipt_routes(book))
    server = TestServer(app)
    await server.start_server()
    return server


async def test_last_stage_assembles_a_bundle_from_its_peers(tmp_path):
    books = [ReceiptBook(k, DOMAIN, tmp_path / f"r{i}") for i, k in enumerate(KEYS)]
    servers = [await serve(book) for book in books[:2]]
    try:
        job = spec()
        for index in (0, 1):
            books[index].sign(job, index, OUTPUT, proofs(index))
        own = books[2].sign(job, 2, OUTPUT, proofs(2))
        async with aiohttp.ClientSession() as session:

            async def fetch(index):
                return await fetch_peer_stage(session, str(servers[index].make_url("/")), job.job_id_hex, wait_s=5)

            bundle = await assemble_bundle(own, 2, fetch, DOMAIN)
        assert bundle.complete and bundle.job_id == job.job_id
        check_receipts(bundle)
        assert check_signers(bundle, DOMAIN) == tuple(k.address for k in KEYS)
    finally:
        for server in servers:
            await server.close()


async def test_a_peer_that_signs_late_is_waited_for(tmp_path):
    book = ReceiptBook(KEYS[0], DOMAIN)
    server = await serve(book)
    try:
        job = spec()
        asyncio.get_running_loop().call_later(0.3, book.sign, job, 0, OUTPUT, proofs(0))
        async with aiohttp.ClientSession() as session:
            stage = await fetch_peer_stage(session, str(server.make_url("/")), job.job_id_hex, wait_s=5, poll_s=0.05)
        assert stage.receipt.stage_index == 0
    finally:
        await server.close()


async def test_a_peer_that_never_signs_is_a_clear_error():
    book = ReceiptBook(KEYS[0], DOMAIN)
    server = await serve(book)
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(WorkerError, match="no signed receipt for job .* within 0s \\(HTTP 404\\)"):
                await fetch_peer_stage(session, str(server.make_url("/")), spec().job_id_hex, wait_s=0.2, poll_s=0.05)
    finally:
        await server.close()


async def test_a_peer_serving_a_receipt_for_another_domain_breaks_assembly(tmp_path):
    job = spec()
    honest = [ReceiptBook(k, DOMAIN) for k in KEYS]
    elsewhere = ReceiptBook(KEYS[0], ReceiptDomain(1, DOMAIN.verifying_contract))
    entries = {0: elsewhere.sign(job, 0, OUTPUT, proofs(0)).stage, 1: honest[1].sign(job, 1, OUTPUT, proofs(1)).stage}
    own = honest[2].sign(job, 2, OUTPUT, proofs(2))

    async def fetch(index):
        return entries[index]

    with pytest.raises(WorkerError, match="stage 0 receipt is signed by"):
        await assemble_bundle(own, 2, fetch, DOMAIN)


def test_a_worker_only_signs_its_own_stage(tmp_path):
    book = ReceiptBook(KEYS[1], DOMAIN)
    with pytest.raises(WorkerError, match="stage 0 is assigned to"):
        book.sign(spec(), 0, OUTPUT, proofs(0))


def test_signed_receipts_survive_a_restart(tmp_path):
    job = spec()
    signed = ReceiptBook(KEYS[0], DOMAIN, tmp_path).sign(job, 0, OUTPUT, proofs(0))
    again = ReceiptBook(KEYS[0], DOMAIN, tmp_path).get(job.job_id_hex)
    assert again == signed
    assert json.loads((tmp_path / f"{job.job_id_hex}.json").read_text())["job_id"] == job.job_id_hex


async def test_receipt_route_errors_are_json(tmp_path):
    server = await serve(ReceiptBook(KEYS[0], DOMAIN))
    async with TestClient(server) as client:
        bad = await client.get("/v1/jobs/0x12/receipt")
        assert bad.status == 400 and (await bad.json())["error"]["code"] == "bad_job_id"
        missing = await client.get(f"/v1/jobs/0x{'00' * 32}/receipt")
        assert missing.status == 404 and (await missing.json())["error"]["code"] == "unknown_job"


# ------------------------------------------------------------------------ against the orchestrator


@pytest.fixture
async def orchestrator_url(tmp_path):
    """The validator app with the orchestration routes: two staked workers form one 2-stage group."""
    from types import SimpleNamespace

    from node.orchestration.api import orchestration_registrar
    from node.orchestration.grouping import GroupingPolicy, ModelShape
    from node.orchestration.orchestrator import Orchestrator
    from node.orchestration.registry import Registry, RegistryPolicy, stake_lookup
    from node.pipeline.tiny import tiny_model_dir
    from node.validator.app import build_app
    from node.validator.config import ValidatorConfig
    from tests.orchestration.local_pipeline import LocalPipeline, LocalWorker

    model_dir = tiny_model_dir("llama", seed=3, path=tmp_path / "tiny", num_layers=4)
    registry = Registry(stake_lookup({k.address: 10**18 for k in KEYS[:2]}), RegistryPolicy(min_stake_wei=10**18))
    driver = LocalPipeline(model_dir, {k.address: LocalWorker(k.address, model_dir) for k in KEYS[:2]})
    orchestrator = Orchestrator(registry, driver, "0x" + "cd" * 32, ModelShape(4, 1 << 20), GroupingPolicy(stages_per_group=2))
    app = build_app(SimpleNamespace(config=ValidatorConfig()), registrars=[orchestration_registrar(orchestrator)], dashboard=False)
    server = TestServer(app)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), orchestrator
    await server.close()


def worker_for(key, url, session) -> Worker:
    worker = Worker(WorkerConfig(keystore=None, validator_url=url, memory_bytes=64 << 20), key, session)
    worker.stage_url = f"http://127.0.0.1:{9100 + KEYS.index(key)}"
    return worker


async def test_workers_register_heartbeat_and_learn_their_stage(orchestrator_url):
    url, orchestrator = orchestrator_url
    async with aiohttp.ClientSession() as session:
        workers = [worker_for(k, url, session) for k in KEYS[:2]]
        for worker in workers:
            await worker.register()
        for worker in workers:
            await worker._beat()
        stages = sorted((w.state.assignment["stage_index"], w.state.assignment["layer_start"]) for w in workers)
        assert stages == [(0, 0), (1, 2)]
        assert all(w.state.assignment["status"] == "assigned" for w in workers)
        # A validator that forgot the worker (restart) gets a fresh registration at the next heartbeat.
        orchestrator.registry.leave(KEYS[0].address)
        await workers[0]._beat()
        assert orchestrator.registry.get(KEYS[0].address) is not None
        assert (await ValidatorClient(url, session).stage_urls())[KEYS[1].address] == "http://127.0.0.1:9101"


async def test_an_unstaked_worker_is_refused_with_the_validators_reason(orchestrator_url):
    url, orchestrator = orchestrator_url
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValidatorRefused, match="insufficient_stake.*at least 1000000000000000000 wei"):
            await worker_for(KEYS[2], url, session).register()
    assert orchestrator.registry.get(KEYS[2].address) is None


async def test_unreachable_validator_is_named():
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValidatorUnreachable, match="cannot reach the validator at http://127.0.0.1:9"):
            await ValidatorClient("http://127.0.0.1:9", session).health()


def test_the_book_keeps_memory_bounded_and_reads_older_receipts_from_disk(tmp_path):
    book = ReceiptBook(KEYS[0], DOMAIN, tmp_path, keep_in_memory=2)
    specs = [JobSpec(**{**spec().__dict__, "seed": seed}) for seed in range(4)]
    for job in specs:
        book.sign(job, 0, OUTPUT, proofs(0))
    assert len(book) == 2
    assert book.get(specs[0].job_id_hex).spec == specs[0]  # from disk
    assert ReceiptBook(KEYS[0], DOMAIN, None, keep_in_memory=2).get(specs[0].job_id_hex) is None
