"""Validators with their own ledgers share one contract (PROTOCOL I7): one proposer per epoch, in turn.

Two validators, threshold two, each judging its own jobs into its own ledger, one in-process chain. Epoch n
is the turn of validator n mod 2 (the set in address order); the other follows it (fetches its entries and
checks them against the chain's Anchored event) and co-signs it. A worker both paid claims the sum of what
both ledgers owe it; a proposer out of turn waits for the grace; one that lost the race gives its epoch up
and anchors its entries in a later one; a peer serving made-up entries cannot mislead a follower.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ledger.chain.client import ChainClient
from ledger.chain.sync import ChainSync
from ledger.store import Ledger
from node.protocol.receipts import ReceiptDomain
from node.protocol.signing import SigningKey
from node.validator.app import build_app
from node.validator.follow import follow_chain, propose_epoch
from node.validator.outbox import deliver_once
from node.validator.replay_models import ReplayModels
from node.validator.rotation import LatestEpochClock, may_propose, proposer_of
from node.validator.service import ValidatorNode
from tests.validator.conftest import deploy_and_stake, make_config
from tests.validator.factory import Group, run_job

pytestmark = pytest.mark.slow

PROMPT = [3, 1, 4, 1, 5, 9]
GRACE = 3600.0


def test_turns_go_round_the_set_in_address_order_and_the_grace_opens_any_turn():
    validators = ["0x0000000000000000000000000000000000000001", "0x00000000000000000000000000000000000000Aa"]
    assert [proposer_of(n, validators) for n in (1, 2, 3)] == [validators[1], validators[0], validators[1]]
    assert may_propose(validators[1].lower(), 1, validators, waited_s=0, grace_s=GRACE)
    assert not may_propose(validators[0], 1, validators, waited_s=GRACE - 1, grace_s=GRACE)
    assert may_propose(validators[0], 1, validators, waited_s=GRACE, grace_s=GRACE)
    assert not may_propose("0x" + "22" * 20, 1, validators, waited_s=10 * GRACE, grace_s=GRACE)  # not in the set
    clock = LatestEpochClock(now=iter([10.0, 15.0, 20.0]).__next__)
    assert (clock.waited(4), clock.waited(4), clock.waited(5)) == (0.0, 5.0, 0.0)


class Clock:
    """A node's clock for the grace, moved by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclasses.dataclass
class Pair:
    chain: ChainClient
    nodes: list[ValidatorNode]  # in turn order: nodes[n % 2] proposes epoch n
    clocks: list[Clock]
    group: Group

    def first(self) -> ValidatorNode:
        return self.nodes[1]  # epoch 1's proposer

    def second(self) -> ValidatorNode:
        return self.nodes[0]  # epoch 2's

    def wait_out_the_grace(self) -> None:
        for clock in self.clocks:
            clock.t += GRACE


async def _serve(app: web.Application) -> tuple[str, TestServer]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return str(server.make_url("")).rstrip("/"), server


@pytest.fixture
async def pair(request, tmp_path, model_dir, model_id, worker_keys):
    """Two validators; the first proposer's ledger on `request.param` ("sqlite" unless a test asks for "postgresql")."""
    backend = getattr(request, "param", "sqlite")
    chain = ChainClient.embedded()
    deploy_and_stake(chain, worker_keys)
    other = SigningKey.generate()
    chain.add_validator(chain.dev_keys[0], other.address)
    chain.fund(other.address, 10**18)  # gas for the anchors it sends
    chain.set_threshold(chain.dev_keys[0], 2)
    chain.fund_rewards(chain.dev_keys[0], 10**18)
    models = ReplayModels([model_dir])
    domain = ReceiptDomain(chain.chain_id, chain.address)
    keys = sorted([SigningKey(bytes(chain.dev_keys[0].key)), other], key=lambda k: int(k.address, 16))
    nodes, clocks, servers = [], [], []
    for index, key in enumerate(keys):
        url = f"sqlite+aiosqlite:///{tmp_path / f'ledger-{index}.db'}"
        if index == 1 and backend == "postgresql":  # the first proposer: it gives an epoch up
            url = request.getfixturevalue("pg_url")
        ledger = await Ledger.open(url)
        config = make_config(model_dir, audit_rate=1.0, validator_id=f"validator-{index}", proposer_grace_seconds=GRACE)
        node = ValidatorNode(config, ledger, domain=domain, models=models, chain=chain, chain_key=key)
        clocks.append(Clock())
        node.epoch_clock = LatestEpochClock(now=clocks[-1])
        nodes.append(node)
        servers.append(await _serve(build_app(node, dashboard=False)))
    for node, (url, _) in zip(nodes, servers):
        node.config = dataclasses.replace(node.config, public_url=url,
                                          peers=tuple(u for u, _ in servers if u != url))
        await ChainSync(chain, node.ledger).sync_to_head()
    yield Pair(chain, nodes, clocks, Group(model_dir, model_id, worker_keys, domain))
    for _, server in servers:
        await server.close()
    for node in nodes:
        await node.ledger.close()


async def _honest_job(pair: Pair, node: ValidatorNode, seed: int) -> int:
    """An honest job judged by `node`; what each of its three workers earned."""
    bundle = run_job(pair.group, pair.group.spec(PROMPT, seed=seed, max_new_tokens=6), perturbed_stage=None)
    await node.submit_bundle(bundle.to_json().encode())
    job_id = await node.validate_next()
    verdict = await node.ledger.verdict(job_id)
    assert verdict.outcome == "accepted"
    return [int(w) for w in (await node.job(job_id))["verdict"]["rewards_wei"]]


async def _claimable(pair: Pair, node: ValidatorNode, worker: SigningKey) -> int:
    """What `worker` is owed on chain per `node`'s ledger: its leaf in the latest anchored root."""
    proof = await node.ledger.reward_proof(worker.address, pair.chain.latest_anchor().latest_epoch)
    assert proof.verify() and proof.rewards_root == "0x" + pair.chain.latest_anchor().rewards_root.hex()
    return proof.cumulative


async def test_a_worker_paid_by_two_validators_claims_what_both_ledgers_owe_it(pair, worker_keys):
    first, second = pair.first(), pair.second()
    paid_by_first = await _honest_job(pair, first, seed=11)
    paid_by_second = await _honest_job(pair, second, seed=12)
    assert await propose_epoch(second) is None  # epoch 1 is the first's turn
    epoch = await propose_epoch(first)
    assert epoch["number"] == 1
    assert await deliver_once(first) == (1, 0)  # the second co-signs: its turn, its roots
    assert await deliver_once(second) == (0, 0)  # the second owes nothing yet

    epoch = await propose_epoch(second)  # follows epoch 1 from the first, then closes epoch 2 on top of it
    assert epoch["number"] == 2
    assert (await second.ledger.followed_epoch(1)).proposer == first.chain_key.address
    assert await deliver_once(second) == (1, 0)
    assert await follow_chain(first) == 1

    for stage, worker in enumerate(worker_keys):
        owed = paid_by_first[stage] + paid_by_second[stage]
        assert owed > 0
        assert await _claimable(pair, first, worker) == await _claimable(pair, second, worker) == owed
        proof = await second.ledger.reward_proof(worker.address)
        pair.chain.claim(worker, proof.cumulative, [bytes.fromhex(p[2:]) for p in proof.proof])
        assert pair.chain.claimed_of(worker.address) == owed
    for node in pair.nodes:
        assert (await node.ledger.verify()).ok


async def test_a_proposer_out_of_turn_waits_for_the_grace(pair):
    first, second = pair.first(), pair.second()
    await _honest_job(pair, second, seed=13)
    assert await propose_epoch(second) is None
    await second.close_epoch(number=1)  # forced: the second's own signature alone is not enough
    assert await deliver_once(second) == (0, 1)
    [row] = await second.ledger.outbox()
    assert "refused: turn:" in row.last_error and pair.chain.latest_anchor().count == 0
    assert 'stagewise_cosign_refusals_total{kind="anchor",reason="turn"} 1.0' in first.metrics.render().decode()

    pair.wait_out_the_grace()  # the first is down, or has nothing to anchor: the chain waited long enough
    assert await deliver_once(second) == (1, 0)
    assert pair.chain.latest_anchor().latest_epoch == 1


@pytest.mark.parametrize("pair", ["sqlite", "postgresql"], indirect=True)
async def test_a_proposer_that_lost_the_race_anchors_its_entries_in_a_later_epoch(pair, worker_keys):
    first, second = pair.first(), pair.second()
    paid_by_first = await _honest_job(pair, first, seed=14)
    paid_by_second = await _honest_job(pair, second, seed=15)
    assert (await propose_epoch(first))["number"] == 1  # closed, but its anchor is never sent: the first stalls
    assert await propose_epoch(second) is None  # not its turn: its clock starts at epoch 0
    pair.wait_out_the_grace()
    assert (await propose_epoch(second))["number"] == 1  # after the grace the second takes epoch 1
    assert await deliver_once(second) == (1, 0)

    assert await follow_chain(first) == 1  # gives its epoch 1 up and follows the second's
    [row] = await first.ledger.outbox()
    assert row.status == "failed" and "another validator" in row.last_error
    assert await deliver_once(first) == (0, 0)  # nothing owed, nothing sent twice
    assert await propose_epoch(second) is None  # epoch 2 is its turn, but it has nothing to close
    assert await propose_epoch(first) is None  # not its turn
    pair.wait_out_the_grace()
    assert (await propose_epoch(first))["number"] == 2
    assert await deliver_once(first) == (1, 0)
    assert await follow_chain(second) == 1
    for stage, worker in enumerate(worker_keys):
        owed = paid_by_first[stage] + paid_by_second[stage]
        assert await _claimable(pair, first, worker) == await _claimable(pair, second, worker) == owed
    for node in pair.nodes:
        assert (await node.ledger.verify()).ok


async def test_a_peer_serving_made_up_entries_cannot_mislead_a_follower(pair, worker_keys):
    first, second = pair.first(), pair.second()
    await _honest_job(pair, first, seed=16)
    await propose_epoch(first)
    assert await deliver_once(first) == (1, 0)
    real = await first.epoch_entries(1)
    forged = json.loads(json.dumps(real))
    reward = next(e for e in forged["entries"] if e["kind"] == "reward")
    reward["worker"] = second.chain_key.address  # its reward moved to someone else

    async def entries(request: web.Request) -> web.Response:
        return web.json_response(forged)

    app = web.Application()
    app.router.add_get("/v1/epochs/{number}/entries", entries)
    liar, server = await _serve(app)
    try:
        second.config = dataclasses.replace(second.config, peers=(liar, *second.config.peers))
        assert await follow_chain(second) == 1  # from the honest peer, after the liar's entries failed the roots
    finally:
        await server.close()
    followed = await second.ledger.followed_epoch(1)
    assert followed.source == first.config.public_url
    assert await second.ledger.epoch_cumulative(1) == await first.ledger.epoch_cumulative(1)
    assert second.chain_key.address not in await second.ledger.epoch_cumulative(1)
