"""Consequences on chain: a blamed stage is slashed through the outbox, exactly once, on both chain
backends; epochs are anchored; with the chain down the slash and the anchor wait, and arrive once it is up."""

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ledger.chain.sync import ChainSync
from node.protocol.receipts import ReceiptDomain
from node.validator.app import build_app
from node.validator.outbox import deliver_once, warn_if_pool_short
from node.validator.replay_models import ReplayModels
from node.validator.service import ValidatorNode
from tests.validator.conftest import STAKE, make_config
from tests.validator.factory import Group, run_job

pytestmark = pytest.mark.slow

PROMPT = [2, 7, 1, 8, 2, 8]
SLASH = 10**16


async def perturbed_job_through(node, group) -> dict:
    async with TestClient(TestServer(build_app(node))) as client:
        bundle = run_job(group, group.spec(PROMPT, max_new_tokens=8), perturbed_stage=1)
        response = await client.post("/v1/bundles", data=bundle.to_json())
        assert response.status == 202, await response.text()
        job_id = (await response.json())["job_id"]
        assert await node.validate_next() == job_id
        return await (await client.get(f"/v1/jobs/{job_id}")).json()


async def test_a_blamed_stage_is_slashed_on_chain_once_and_the_others_keep_their_stake(
    chain, ledger, model_dir, model_id, worker_keys
):
    domain = ReceiptDomain(chain.chain_id, chain.address)
    group = Group(model_dir, model_id, worker_keys, domain)
    node = ValidatorNode(make_config(model_dir), ledger, domain=domain, models=ReplayModels([model_dir]),
                         chain=chain, chain_key=chain.dev_keys[0])
    await ChainSync(chain, ledger).sync_to_head()  # stakes reach the ledger from chain events
    assert (await ledger.worker(worker_keys[1].address)).stake == STAKE

    job = await perturbed_job_through(node, group)
    evidence_hash = job["verdict"]["evidence_hash"]
    assert job["verdict"]["blamed_stage"] == 1
    assert await deliver_once(node) == (1, 0)
    assert await deliver_once(node) == (0, 0)  # nothing owed twice
    assert chain.evidence_used(bytes.fromhex(evidence_hash[2:]))
    assert [chain.stake_of(k.address) for k in worker_keys] == [STAKE, STAKE - SLASH, STAKE]

    epoch = await node.close_epoch()
    assert await deliver_once(node) == (1, 0)
    anchored = chain.latest_anchor()
    assert (anchored.count, anchored.latest_epoch) == (1, epoch["number"])
    assert chain.entries_root_of(epoch["number"]).hex() == epoch["entries_root"][2:]
    # Stage 0 was paid for its proven work, but nobody funded the pool its claim is paid from: the validator
    # says so (issue 18, item 2) until `stagewise chain fund-rewards` pays in.
    assert int(epoch["total_rewards"]) > 0 and chain.reward_pool() == 0
    assert await warn_if_pool_short(node, epoch["number"])
    await asyncio.to_thread(chain.fund_rewards, chain.dev_keys[0], int(epoch["total_rewards"]))
    assert not await warn_if_pool_short(node, epoch["number"])

    # Following the chain again journals nothing new: the Slashed event is the slash already journaled.
    await ChainSync(chain, ledger).sync_to_head()
    slashes = [e for e in await ledger.entries(0, 1000) if e.kind == "slash"]
    assert [(e.worker, e.evidence_hash) for e in slashes] == [(worker_keys[1].address, evidence_hash)]
    assert (await ledger.worker(worker_keys[1].address)).stake == STAKE - SLASH
    assert (await ledger.epoch(epoch["number"])).anchor_tx is not None


async def test_with_the_chain_down_slashes_and_anchors_wait_and_arrive_once(ledger, model_dir, model_id, worker_keys):
    from ledger.chain.client import ChainClient
    from ledger.chain.embedded import ChainServer

    embedded = ChainClient.embedded()
    from tests.validator.conftest import deploy_and_stake

    deploy_and_stake(embedded, worker_keys)
    server = ChainServer(embedded.w3)
    url = await server.start()
    # The server answers on this event loop: talk to it from threads, as the node does.
    chain = await asyncio.to_thread(ChainClient.connect, url, address=embedded.address, request_timeout=5)
    domain = ReceiptDomain(await asyncio.to_thread(lambda: chain.chain_id), chain.address)
    group = Group(model_dir, model_id, worker_keys, domain)
    node = ValidatorNode(make_config(model_dir), ledger, domain=domain, models=ReplayModels([model_dir]),
                         chain=chain, chain_key=embedded.dev_keys[0])
    await ChainSync(chain, ledger).sync_to_head()

    await server.stop()  # the chain becomes unreachable
    job = await perturbed_job_through(node, group)
    epoch = await node.close_epoch()
    assert await deliver_once(node) == (0, 2)
    assert await deliver_once(node) == (0, 2)
    assert {row.status for row in await ledger.outbox()} == {"pending"}
    assert 'stagewise_chain_errors_total{kind="slash"} 2.0' in node.metrics.render().decode()

    server = ChainServer(embedded.w3, port=server.port)  # back, same address, same state
    await server.start()
    try:
        assert await deliver_once(node) == (2, 0)
        assert await deliver_once(node) == (0, 0)
        assert [embedded.stake_of(k.address) for k in worker_keys] == [STAKE, STAKE - SLASH, STAKE]
        assert embedded.latest_anchor().count == 1 and embedded.latest_anchor().latest_epoch == epoch["number"]
        rows = await ledger.outbox()
        assert sorted((r.kind, r.status) for r in rows) == [("anchor", "sent"), ("slash", "sent")]
        assert all(r.tx_hash for r in rows)
        slashed = [e for e in embedded.events_since(0) if type(e).__name__ == "Slashed"]
        assert len(slashed) == 1 and "0x" + bytes(slashed[0].evidence_hash).hex() == job["verdict"]["evidence_hash"]
    finally:
        await server.stop()


async def test_a_crash_after_sending_does_not_send_twice(chain, sqlite_ledger, model_dir, model_id, worker_keys):
    """The slash reached the chain but the node died before marking the row sent: the next sender sees the
    evidence used on chain and records the transaction instead of slashing again."""
    from ledger.models import OUTBOX_PENDING

    ledger = sqlite_ledger
    domain = ReceiptDomain(chain.chain_id, chain.address)
    group = Group(model_dir, model_id, worker_keys, domain)
    node = ValidatorNode(make_config(model_dir), ledger, domain=domain, models=ReplayModels([model_dir]),
                         chain=chain, chain_key=chain.dev_keys[0])
    await ChainSync(chain, ledger).sync_to_head()
    await perturbed_job_through(node, group)
    [row] = await ledger.take_outbox(10)
    tx = await asyncio.to_thread(chain.signed_slash, chain.dev_keys[0], chain.dev_keys[:1], row.payload["worker"],
                                 SLASH, bytes.fromhex(row.payload["evidence_hash"][2:]))
    await ledger.mark_failed(row.id, "simulated crash after sending", retry=True)  # back to pending
    assert [r.status for r in await ledger.outbox()] == [OUTBOX_PENDING]
    assert await deliver_once(node) == (1, 0)
    [row] = await ledger.outbox()
    assert row.status == "sent" and row.tx_hash == tx.tx_hash
    assert chain.stake_of(worker_keys[1].address) == STAKE - SLASH


async def test_stake_below_the_minimum_on_chain_keeps_a_worker_out_and_takes_it_out_of_the_next_job(
    chain, ledger, model_dir, model_id, worker_keys
):
    # The attack (issue 15, item 3), on both chain backends: stake less than one slash, or withdraw after
    # registering; a slash is capped at the stake left, so a proven fault would cost next to nothing.
    from node.cli.validator import parse_orchestration_flags
    from node.orchestration.registry import RegistrationRefused
    from node.orchestration.setup import build_orchestration
    from node.protocol.signing import SigningKey
    from node.protocol.worker_messages import make_registration
    from tests.orchestration.conftest import CAPACITIES
    from tests.orchestration.local_pipeline import LocalPipeline, LocalWorker

    domain = ReceiptDomain(chain.chain_id, chain.address)
    node = ValidatorNode(make_config(model_dir), ledger, domain=domain, models=ReplayModels([model_dir]),
                         chain=chain, chain_key=chain.dev_keys[0])
    assert node.config.min_stake_wei == 3 * SLASH
    poor = SigningKey.generate()
    await asyncio.to_thread(chain.fund, poor.address, 10**17)
    await asyncio.to_thread(chain.stake, poor, SLASH - 1)
    await ChainSync(chain, ledger).sync_to_head()
    args = parse_orchestration_flags(["--allow-private-stage-urls"])
    honest = worker_keys[0]
    driver = LocalPipeline(model_dir, {k.address: LocalWorker(k.address, model_dir) for k in (honest, poor)})
    registry = build_orchestration(args, node, model_dir, driver=driver).orchestrator.registry

    def registration(key):
        return make_registration(key, CAPACITIES[0], "eu", "http://127.0.0.1:1", validator=node.address,
                                 chain_id=chain.chain_id)

    with pytest.raises(RegistrationRefused) as refused:
        await registry.register(registration(poor))
    assert refused.value.code == "insufficient_stake"
    await registry.register(registration(honest))
    assert await registry.understaked([honest.address]) is None
    await asyncio.to_thread(chain.request_unstake, honest, STAKE - SLASH)  # keeps one slash: below the minimum
    await ChainSync(chain, ledger).sync_to_head()
    worker, why = await registry.understaked([honest.address])
    assert worker == honest.address and why.code == "insufficient_stake"
