"""Co-signing between validators (PROTOCOL I7): three validators, threshold two, each with its own ledger.

The proposer judges jobs and owes slashes and anchors; its outbox gathers its own signature and its peers'
and sends an order only with two. A peer signs only what it recomputed itself: it refuses fabricated
evidence, a verdict that blames the wrong stage, and an epoch whose roots do not match its entries. A peer
that is down only makes the order wait. All three serve their API on loopback in this event loop; they share
one in-process chain (the proposer sends, the peers only read and sign).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ledger.chain.client import ChainClient
from ledger.chain.orders import AnchorOrder, SlashOrder, sign_order
from ledger.chain.sync import ChainSync
from ledger.models import OUTBOX_PENDING
from ledger.store import Ledger
from node.protocol.receipts import ReceiptDomain
from node.protocol.signing import SigningKey
from node.validator.app import build_app
from node.validator.evidence import Evidence, evidence_hash
from node.validator.outbox import deliver_once
from node.validator.replay_models import ReplayModels
from node.validator.service import ValidatorNode, evidence_document
from tests.validator.conftest import STAKE, deploy_and_stake, make_config
from tests.validator.factory import Group, run_job

pytestmark = pytest.mark.slow

PROMPT = [2, 7, 1, 8, 2, 8]
SLASH = 10**16


@dataclasses.dataclass
class Network:
    chain: ChainClient
    proposer: ValidatorNode
    peers: list[ValidatorNode]
    urls: dict[int, str]  # id(node) -> its API's URL
    group: Group

    def url(self, node: ValidatorNode) -> str:
        return self.urls[id(node)]


async def _serve(node: ValidatorNode) -> tuple[str, TestServer]:
    server = TestServer(build_app(node, dashboard=False), host="127.0.0.1")
    await server.start_server()
    return str(server.make_url("")).rstrip("/"), server


@pytest.fixture
async def network(tmp_path, model_dir, model_id, worker_keys):
    chain = ChainClient.embedded()
    deploy_and_stake(chain, worker_keys)
    peer_keys = [SigningKey.generate() for _ in range(2)]
    for key in peer_keys:
        chain.add_validator(chain.dev_keys[0], key.address)
    chain.set_threshold(chain.dev_keys[0], 2)
    models = ReplayModels([model_dir])
    domain = ReceiptDomain(chain.chain_id, chain.address)
    nodes = []
    for index, key in enumerate([chain.dev_keys[0], *peer_keys]):
        ledger = await Ledger.open(f"sqlite+aiosqlite:///{tmp_path / f'ledger-{index}.db'}")
        # grace 0: any validator may propose any epoch here; whose turn it is is tested in test_rotation.py
        config = make_config(model_dir, audit_rate=1.0, validator_id=f"validator-{index}", proposer_grace_seconds=0)
        nodes.append(ValidatorNode(config, ledger, domain=domain, models=models, chain=chain,
                                   chain_key=key if isinstance(key, SigningKey) else SigningKey(bytes(key.key))))
    served = [await _serve(node) for node in nodes]
    urls = [url for url, _ in served]
    for node, url in zip(nodes, urls):
        node.config = dataclasses.replace(node.config, public_url=url, peers=tuple(u for u in urls if u != url))
    await ChainSync(chain, nodes[0].ledger).sync_to_head()
    yield Network(chain, nodes[0], nodes[1:], {id(n): u for n, u in zip(nodes, urls)},
                  Group(model_dir, model_id, worker_keys, domain))
    for _, server in served:
        await server.close()
    for node in nodes:
        await node.ledger.close()


async def _judged(network: Network, *, perturbed_stage: int | None) -> str:
    spec = network.group.spec(PROMPT, seed=7 if perturbed_stage is None else 8, max_new_tokens=8)
    bundle = run_job(network.group, spec, perturbed_stage=perturbed_stage)
    await network.proposer.submit_bundle(bundle.to_json().encode())
    return await network.proposer.validate_next()


def _metric(node: ValidatorNode, line: str) -> bool:
    return line in node.metrics.render().decode()


async def test_two_of_three_sign_an_honest_slash_and_it_reaches_the_chain(network, worker_keys):
    job_id = await _judged(network, perturbed_stage=1)
    assert await deliver_once(network.proposer) == (1, 0)
    assert network.chain.stake_of(worker_keys[1].address) == STAKE - SLASH
    [row] = await network.proposer.ledger.outbox()
    assert row.status == "sent" and len(row.payload["signatures"]) >= 2
    assert sum(_metric(peer, 'stagewise_cosign_signed_total{kind="slash"} 1.0') for peer in network.peers) >= 1
    assert job_id == row.payload["job_id"]


async def test_a_peer_down_makes_the_order_wait_and_it_is_never_sent_with_fewer(network, worker_keys):
    await _judged(network, perturbed_stage=1)
    up = network.proposer.config.peers
    down = [await _serve(peer) for peer in network.peers]  # two more servers, closed at once: nothing listens
    for _, server in down:
        await server.close()
    network.proposer.config = dataclasses.replace(network.proposer.config, peers=tuple(url for url, _ in down))
    assert await deliver_once(network.proposer) == (0, 1)
    [row] = await network.proposer.ledger.outbox()
    assert row.status == OUTBOX_PENDING and row.last_error.startswith("waiting: 1 of 2 validator signatures")
    assert "unreachable" in row.last_error and list(row.payload["signatures"]) == [network.proposer.address]
    assert network.chain.stake_of(worker_keys[1].address) == STAKE
    assert _metric(network.proposer, 'stagewise_orders_waiting_total{kind="slash"} 1.0')

    network.proposer.config = dataclasses.replace(network.proposer.config, peers=up)  # the peers are back
    assert await deliver_once(network.proposer) == (1, 0)
    [row] = await network.proposer.ledger.outbox()
    assert row.status == "sent" and network.chain.stake_of(worker_keys[1].address) == STAKE - SLASH


async def _refusal(network: Network, peer: ValidatorNode, body: dict) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(network.url(peer) + "/v1/cosign", json=body) as response:
            assert response.status == 422, await response.text()
            return (await response.json())["error"]["message"]


async def _serve_evidence(document: dict) -> tuple[str, web.AppRunner]:
    """A dishonest proposer's API: it serves the evidence it made up for any job."""

    async def evidence(request: web.Request) -> web.Response:
        return web.json_response(document)

    app = web.Application()
    app.router.add_get("/v1/jobs/{job_id}/evidence", evidence)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", runner


async def test_cosigners_refuse_fabricated_evidence_and_a_wrongly_blamed_stage(network, worker_keys):
    honest_job = await _judged(network, perturbed_stage=None)
    cheat_job = await _judged(network, perturbed_stage=1)
    peer = network.peers[0]
    made_up = []
    # Fabricated: an honest job's evidence, its verdict turned into a slash of stage 1.
    document = await evidence_document(network.proposer.ledger, honest_job)
    document["verdict"] = dict(document["verdict"], outcome="blamed", blamed_stage=1, reason="proof",
                               rewards_wei=["0", "0", "0"], slash_wei=str(SLASH))
    made_up.append((honest_job, document, worker_keys[1].address, "not_reproduced"))
    # The wrong stage: a cheater's real evidence, its verdict moved onto the honest stage before it.
    document = await evidence_document(network.proposer.ledger, cheat_job)
    document["verdict"] = dict(document["verdict"], blamed_stage=0, rewards_wei=["0", "0", "0"])
    made_up.append((cheat_job, document, worker_keys[0].address, "not_reproduced"))
    # The real evidence, but an order that names another worker than the one it blames.
    made_up.append((cheat_job, await evidence_document(network.proposer.ledger, cheat_job), worker_keys[2].address, "worker"))
    for job_id, document, worker, code in made_up:
        url, runner = await _serve_evidence(json.loads(json.dumps(document)))
        try:
            peer.config = dataclasses.replace(peer.config, peers=(*peer.config.peers, url))
            order = SlashOrder(worker, SLASH, evidence_hash(Evidence.from_dict(document)), network.chain.order_deadline())
            reason = await _refusal(network, peer, {"order": order.to_json(), "proposer": url, "job_id": job_id})
            assert reason.startswith(code + ":"), reason
        finally:
            await runner.cleanup()
    assert _metric(peer, 'stagewise_cosign_refusals_total{kind="slash",reason="not_reproduced"} 2.0')
    assert _metric(peer, 'stagewise_cosign_refusals_total{kind="slash",reason="worker"} 1.0')
    # A proposer it does not know fetches nothing from it.
    order = SlashOrder(worker_keys[1].address, SLASH, b"\1" * 32, network.chain.order_deadline())
    reason = await _refusal(network, peer, {"order": order.to_json(), "proposer": "http://127.0.0.1:9", "job_id": cheat_job})
    assert reason.startswith("unknown_proposer:")
    assert all(network.chain.stake_of(k.address) == STAKE for k in worker_keys)


def _anchor_body(network: Network, order: AnchorOrder) -> dict:
    """A co-sign request for an anchor: the order, where its entries are, and its proposer's own signature."""
    signature = sign_order(network.proposer.chain_key, order, network.chain.domain)
    return {"order": order.to_json(), "proposer": network.proposer.config.public_url,
            "proposer_signature": "0x" + signature.hex()}


async def test_an_epoch_is_cosigned_only_when_its_roots_match_its_entries(network, worker_keys):
    await _judged(network, perturbed_stage=None)
    await _judged(network, perturbed_stage=1)
    assert await deliver_once(network.proposer) == (1, 0)  # the slash, co-signed
    # A slash another proposer carried to the chain: the ledger follows it (no job of its own), the peers
    # accept it in the epoch because it happened there, with two signatures.
    network.chain.signed_slash(network.chain.dev_keys[0], [network.chain.dev_keys[0], network.peers[1].chain_key],
                               worker_keys[2].address, 5, b"\x07" * 32)
    await ChainSync(network.chain, network.proposer.ledger).sync_to_head()
    epoch = await network.proposer.close_epoch()
    peer = network.peers[0]
    wrong = AnchorOrder(epoch["number"], bytes.fromhex(epoch["entries_root"][2:]),
                        b"\x42" * 32, epoch["entry_count"], network.chain.order_deadline())  # a root that pays someone else
    reason = await _refusal(network, peer, _anchor_body(network, wrong))
    assert reason.startswith("rewards_root:"), reason
    short = dataclasses.replace(wrong, rewards_root=bytes.fromhex(epoch["rewards_root"][2:]),
                                entry_count=epoch["entry_count"] - 1)
    assert (await _refusal(network, peer, _anchor_body(network, short))).startswith("entries_root:")
    skipped = dataclasses.replace(short, epoch=epoch["number"] + 1, entry_count=epoch["entry_count"])
    assert (await _refusal(network, peer, _anchor_body(network, skipped))).startswith("epoch:")

    assert await deliver_once(network.proposer) == (1, 0)  # the true roots: both peers audit every job and sign
    assert network.chain.latest_anchor().latest_epoch == epoch["number"]
    assert _metric(peer, 'stagewise_cosign_signed_total{kind="anchor"} 1.0')
    assert _metric(peer, "stagewise_cosign_audited_jobs_total 2.0")  # both rewarded jobs (--audit-rate 1)


async def test_a_cosign_request_that_is_not_an_order_is_refused_with_a_json_error(client):
    """The `client` fixture's node has no chain: nothing it could sign; hostile bodies get 4xx, never 500."""
    for body, status, code in ((b"{", 400, "bad_json"), (b"[]", 422, "refused"), (b'{"order": 7}', 422, "refused")):
        response = await client.post("/v1/cosign", data=body)
        assert response.status == status, await response.text()
        assert (await response.json())["error"]["code"] == code
    response = await client.get("/v1/epochs/0/entries")
    assert response.status == 400
    assert (await client.get("/v1/epochs/5/entries")).status == 404
