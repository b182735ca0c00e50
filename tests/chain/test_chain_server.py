"""The embedded chain served over loopback JSON-RPC: another process's ChainClient works through it."""

from __future__ import annotations

import aiohttp
import pytest

from ledger.chain.client import ChainClient
from ledger.chain.embedded import ChainServer, ThreadedChainServer
from ledger.chain.errors import ChainError, ContractRevert
from ledger.chain.events import Staked
from node.protocol.signing import SigningKey


def test_a_client_by_url_shares_the_in_process_chain():
    validator = SigningKey.generate()  # the devnet's validator key owns the contract and anchors
    local = ChainClient.embedded(owner=validator, unbonding_delay=10)
    assert local.owner() == validator.address and local.is_validator(validator.address)
    with ThreadedChainServer(local.w3) as server:
        remote = ChainClient.connect(server.url, address=local.address)
        assert remote.chain_id == local.chain_id
        worker = SigningKey.generate()
        local.fund(worker.address, 10**18)  # the devnet funds a worker key; the worker process stakes by URL

        staked = remote.stake(worker, 10**17)
        assert isinstance(staked.events[0], Staked)
        assert local.stake_of(worker.address) == 10**17
        local.stake(worker, 1)  # two clients, one key: each picks up the nonce the other used
        remote.stake(worker, 1)
        assert local.stake_of(worker.address) == 10**17 + 2
        with pytest.raises(ContractRevert, match="NotValidator") as refused:
            remote.signed_anchor(worker, [worker], 1, bytes(32), bytes(32), 0)
        assert refused.value.args_ == {"signer": worker.address}

        remote.request_unstake(worker, 10**17 + 2)
        with pytest.raises(ContractRevert, match="UnbondingNotElapsed"):
            remote.withdraw(worker)
        # A worker that moves the served chain's clock skips its unbonding delay: the server refuses it.
        with pytest.raises(ChainError, match="evm_increaseTime is not supported by this node"):
            remote.advance_time(11)
        with pytest.raises(ContractRevert, match="UnbondingNotElapsed"):
            remote.withdraw(worker)
        local.advance_time(11)  # in process, the devnet's own clock still moves
        assert remote.withdraw(worker).events[0].amount == 10**17 + 2
        assert [type(e).__name__ for e in remote.events_since(staked.block_number)] == [
            "Staked",
            "Staked",
            "Staked",
            "UnstakeRequested",
            "Withdrawn",
        ]


async def test_bad_requests_get_json_rpc_errors():
    local = ChainClient.embedded(deploy=False)
    async with ChainServer(local.w3) as server, aiohttp.ClientSession() as http:

        async def post(body):
            async with http.post(server.url, data=body, headers={"Content-Type": "application/json"}) as response:
                assert response.status == 200
                return await response.json()

        assert (await post(b"{not json"))["error"]["code"] == -32700
        assert (await post(b'{"jsonrpc": "2.0", "id": 1, "method": "eth_nope", "params": []}'))["error"][
            "code"
        ] == -32601
        assert (await post(b'{"jsonrpc": "2.0", "id": 2}'))["error"]["code"] == -32600
        batch = await post(
            b'[{"jsonrpc": "2.0", "id": 3, "method": "eth_chainId", "params": []},'
            b' {"jsonrpc": "2.0", "id": 4, "method": "eth_blockNumber", "params": []}]'
        )
        assert [a["id"] for a in batch] == [3, 4]
        assert int(batch[0]["result"], 16) == local.chain_id


def test_a_served_dev_chain_is_owned_by_a_key_nobody_else_knows():
    # The attack (issue 15, item 5): the validator's embedded chain was owned, validated for and paid into
    # by eth-tester's well-known dev keys, so anyone who reached its JSON-RPC could slash any worker.
    from ledger.chain.keys import tester_keys
    from ledger.merkle import keccak

    chain = ChainClient.served_dev_chain(unbonding_delay=10)
    well_known = {key.address for key in tester_keys()}
    assert chain.owner() == chain.owner_key.address not in well_known
    with ThreadedChainServer(chain.w3) as server:
        intruder = ChainClient.connect(server.url, address=chain.address)
        worker = tester_keys()[4]
        intruder.stake(worker, 10**18)
        for dev_key in tester_keys():
            assert not chain.is_validator(dev_key.address)
        with pytest.raises(ContractRevert, match="NotValidator"):
            intruder.signed_slash(tester_keys()[0], tester_keys()[:1], worker.address, 10**17, keccak(b"made up"))
        assert chain.stake_of(worker.address) == 10**18
        chain.signed_slash(chain.owner_key, [chain.owner_key], worker.address, 10**17, keccak(b"evidence"))  # the owner still can
        assert chain.stake_of(worker.address) == 9 * 10**17
