"""A proposer killed with SIGKILL while it gathers signatures loses no order and sends none twice (I7).

Real processes: anvil, the contract with two validators and threshold two, and `stagewise validator run` as
the proposer, its ledger owing one slash. Its peer is a stand-in co-signer served from this test: the first
time it is asked it holds the request open, and the proposer is killed then; the second proposer process
takes the row again after its lease, asks with the very same order (same deadline, the signature the first
one kept), gets the peer's signature and slashes once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from eth_account import Account
from eth_hash.auto import keccak

from ledger.chain.client import ChainClient
from ledger.chain.orders import order_from_json, sign_order
from ledger.store import Ledger
from tests.validator.conftest import STAKE
from tests.validator.processes import spawn_validator, stop, wait_listening

pytestmark = pytest.mark.slow


class StandInPeer:
    """A co-signer that signs whatever it is asked with its key, after holding the first request open."""

    def __init__(self, key, domain) -> None:
        self.key, self.domain = key, domain
        self.asked: list[dict] = []
        self.hold = threading.Event()
        self.hold.set()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                peer.asked.append(body)
                if peer.hold.is_set():
                    time.sleep(60)  # the proposer dies meanwhile
                    return
                order = order_from_json(body["order"])
                answer = {"signer": peer.key.address, "order": body["order"],
                          "signature": "0x" + sign_order(peer.key, order, peer.domain).hex()}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_proposer_killed_mid_collection_loses_no_order_and_sends_it_once(tmp_path, anvil, model_dir, worker_keys):
    owner, peer_key, worker = anvil.keys[0], Account.create(), worker_keys[0]
    chain = ChainClient.connect(anvil.url, dev_keys=anvil.keys)
    chain.deploy(owner, treasury=anvil.keys[1].address, validators=[owner.address, peer_key.address], threshold=2)
    chain.fund(worker.address, 2 * STAKE)
    chain.stake(worker, STAKE)
    evidence = keccak(b"a blamed stage's evidence")
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"

    async def owe_slash():
        async with await Ledger.open(db_url) as ledger:
            async with ledger.transaction() as tx:
                await tx.enqueue("slash", "0x" + evidence.hex(), {"worker": worker.address, "amount": str(10**16),
                                                                   "evidence_hash": "0x" + evidence.hex(), "job_id": "0x" + "11" * 32})

    async def outbox():
        async with await Ledger.open(db_url) as ledger:
            return await ledger.outbox()

    asyncio.run(owe_slash())
    peer = StandInPeer(peer_key, chain.domain)
    flags = ["--peer", peer.url, "--lease-seconds", "2", "--epoch-seconds", "3600", "--epoch-entries", "1000000"]
    os.environ["STAGEWISE_VALIDATOR_KEY"] = "0x" + bytes(owner.key).hex()
    try:
        chain_flags = ["--rpc-url", anvil.url, "--contract", chain.address]
        first = _spawn(db_url, model_dir, tmp_path, "proposer-1", chain_flags + flags)
        try:
            _wait(lambda: peer.asked, 120, "the proposer to ask its peer")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            stop(first)
        [row] = asyncio.run(outbox())
        assert row.status == "sending" and list(row.payload["signatures"]) == [owner.address]
        assert not chain.evidence_used(evidence) and chain.stake_of(worker.address) == STAKE

        peer.hold.clear()
        second = _spawn(db_url, model_dir, tmp_path, "proposer-2", chain_flags + flags)
        try:
            _wait(lambda: asyncio.run(outbox())[0].status == "sent", 120, "the slash to be sent")
        finally:
            stop(second)
    finally:
        os.environ.pop("STAGEWISE_VALIDATOR_KEY", None)
        peer.server.shutdown()
    [row] = asyncio.run(outbox())
    assert len(row.payload["signatures"]) == 2
    assert len({json.dumps(body["order"], sort_keys=True) for body in peer.asked}) == 1  # the same order, resumed
    slashed = [e for e in chain.events_since(0) if type(e).__name__ == "Slashed"]
    assert [(e.evidence_hash, e.amount) for e in slashed] == [(evidence, 10**16)]
    assert row.tx_hash == slashed[0].tx_hash and chain.stake_of(worker.address) == STAKE - 10**16


def _spawn(db_url, model_dir, home, name, flags):
    process = spawn_validator(db_url, model_dir, home, name, *flags[4:], chain=tuple(flags[:4]))
    wait_listening(process, home, name)
    return process
