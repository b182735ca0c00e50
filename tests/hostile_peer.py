"""A peer that answers every request with hostile bytes, and the node's clients that talk to it.

Run as `python -m tests.hostile_peer CASE` (a process of its own: before the bounded parser, reading such an
answer overflowed the C stack and killed the process). The peer answers each HTTP request, stream line and
WebSocket message with JSON nested 100,000 levels deep, or, with `--huge`, with an endless body. Each case
drives one client of the node against it and prints `refused: <why>` once the client turned the bytes into
an error; the process exits 0 unless the client crashed or accepted the answer.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import web3  # noqa: F401 - raises the recursion limit to 100,000, as in every node process
from aiohttp import web

DEEP = "[" * 100_000 + "]" * 100_000
CHUNK = b" " * (1 << 20)


class HostilePeer:
    def __init__(self, huge: bool) -> None:
        self.huge = huge
        self.most_sent = 0  # bytes of the longest answer a client took
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/link", self._link)
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _any(self, request: web.Request) -> web.StreamResponse:
        status = 400 if request.query.get("status") == "400" else 200
        response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        sent = 0
        try:
            if self.huge:
                for _ in range(512):  # 512 MiB unless the client hangs up
                    await response.write(CHUNK)
                    sent += len(CHUNK)
            else:
                await response.write((DEEP + "\n").encode())
                sent += len(DEEP) + 1
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.most_sent = max(self.most_sent, sent)
        return response

    async def _link(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(DEEP)
        await ws.receive(timeout=5)
        await ws.send_str(DEEP)
        await ws.close()
        return ws


async def health_poll(url: str) -> str:
    from node.orchestration.stage_control import HttpPipelineDriver
    from node.protocol.signing import SigningKey

    driver = HttpPipelineDriver(key=SigningKey.generate(), model_id="0x" + "ab" * 32)
    try:
        health = await driver._health(url)
    finally:
        await driver.close()
    assert health is None, health
    return "the stage is unhealthy"


async def peer_receipt(url: str) -> str:
    from node.worker.bundle_assembly import fetch_peer_stage
    from node.worker.errors import WorkerError

    async with aiohttp.ClientSession() as session:
        try:
            await fetch_peer_stage(session, url, "0x" + "11" * 32, wait_s=0.3)
        except WorkerError as error:
            return str(error)
    raise AssertionError("a receipt was accepted")


async def validator_answer(url: str) -> str:
    from node.worker.errors import WorkerError
    from node.worker.validator_client import ValidatorClient

    async with aiohttp.ClientSession() as session:
        try:
            await ValidatorClient(url, session).health()
        except WorkerError as error:
            return str(error)
    raise AssertionError("an answer was accepted")


async def stage_answer(url: str) -> str:
    from node.pipeline.client import StageClient, StageClientError

    async with aiohttp.ClientSession() as session:
        try:
            await StageClient(url, session).health()
        except StageClientError as error:
            return str(error)
    raise AssertionError("an answer was accepted")


async def stage_stream(url: str) -> str:
    from node.pipeline.client import StageClient, StageClientError

    async with aiohttp.ClientSession() as session:
        try:
            async for event in StageClient(url, session).stream("0x" + "11" * 32):
                raise AssertionError(f"an event was accepted: {str(event)[:80]}")
        except StageClientError as error:
            return str(error)
    raise AssertionError("the stream ended without an error")


async def link_handshake(url: str) -> str:
    from node.pipeline.assignment import Assignment, PeerStage
    from node.pipeline.link import OutboundLink
    from node.protocol.signing import SigningKey

    me, peer = SigningKey.generate(), SigningKey.generate()
    stages = (PeerStage(me.address, "http://127.0.0.1:1", 0, 1), PeerStage(peer.address, url, 1, 2))
    link = OutboundLink(me, Assignment("g", "0x" + "ab" * 32, 0, stages), on_lost=lambda reason: None)
    link.start()
    for _ in range(500):
        if link.last_error:
            break
        await asyncio.sleep(0.01)
    await link.close()
    assert not link.connected.is_set() and link.last_error, "the link came up"
    return link.last_error


async def chain_rpc(url: str) -> str:
    """The embedded chain's JSON-RPC server is the peer here: a client sends it the deep body."""
    from ledger.chain.client import ChainClient
    from ledger.chain.embedded import ChainServer

    chain = ChainClient.embedded()
    async with ChainServer(chain.w3, host="127.0.0.1", port=0) as server:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url, data=DEEP, headers={"Content-Type": "application/json"}) as response:
                answer = await response.json()
    assert "error" in answer, answer
    return answer["error"]["message"]


def chain_client(url: str) -> str:
    """A worker reads the chain at the RPC URL its validator named."""
    from ledger.chain.client import ChainClient
    from ledger.chain.errors import ChainError

    try:
        ChainClient.connect(url).w3.eth.block_number
    except ChainError as error:
        return str(error)
    raise AssertionError("an answer was accepted")


def groups_cli(url: str) -> str:
    from node.cli.groups import _get
    from node.cli.main import CommandError

    try:
        _get(url + "/v1/groups", 5, CommandError)
    except CommandError as error:
        return str(error)
    raise AssertionError("an answer was accepted")


def reward_proof(url: str) -> str:
    from node.cli.chain import _validator_proof
    from node.cli.main import CommandError

    try:
        _validator_proof(url, "0x" + "22" * 20, 1)
    except CommandError as error:
        return str(error)
    raise AssertionError("a proof was accepted")


CASES = {
    "health_poll": health_poll, "peer_receipt": peer_receipt, "validator_answer": validator_answer,
    "stage_answer": stage_answer, "stage_stream": stage_stream, "link_handshake": link_handshake,
    "chain_rpc": chain_rpc, "chain_client": chain_client, "groups_cli": groups_cli, "reward_proof": reward_proof,
}


async def main(case: str, huge: bool) -> None:
    peer = HostilePeer(huge)
    url = await peer.start()
    try:
        run = CASES[case]
        reason = await run(url) if asyncio.iscoroutinefunction(run) else await asyncio.to_thread(run, url)
    finally:
        await peer.stop()
    print(f"refused: {reason[:300]}")
    print(f"peer sent {peer.most_sent} bytes in one answer")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], "--huge" in sys.argv))
