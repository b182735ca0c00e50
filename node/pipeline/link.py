"""The long-lived WebSocket from a stage to the next one, and the handshake both ends run.

A stage opens one link to the stage after it (the last stage to stage 0) and keeps it: frames for every
sequence of the group share it. `OutboundLink` connects, proves who it is (challenge-response hello, see
handoff.py), then sends what the stage queues, in order. When the connection drops it tells the stage (whose
sequences in flight on it fail) and reconnects with exponential backoff until the stage stops or is
re-pointed at another neighbour.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import aiohttp

from node.pipeline.assignment import Assignment
from node.pipeline.handoff import hello_message
from node.signing import SignatureError, SigningKey, recover_message

log = logging.getLogger("stagewise.pipeline.link")

LINK_PATH = "/v1/link"
HANDSHAKE_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 256 << 20


class HandshakeError(Exception):
    """The peer is not the neighbour the assignment names, or it did not follow the hello."""


def sign_hello(key: SigningKey, assignment: Assignment, peer: str, nonce: bytes, challenge: bytes) -> dict:
    message = hello_message(assignment.group_id, assignment.stage_index, key.address, peer, nonce, challenge)
    return {
        "type": "hello", "group": assignment.group_id, "stage": assignment.stage_index, "address": key.address,
        "peer": peer, "nonce": "0x" + nonce.hex(), "challenge": "0x" + challenge.hex(),
        "signature": "0x" + key.sign_message(message).hex(),
    }


def check_hello(hello: dict, assignment: Assignment, expected_stage: int, my_address: str, challenge: bytes) -> bytes:
    """Check a hello (or its answer) from stage `expected_stage`; returns the sender's nonce."""
    expected = assignment.stages[expected_stage].worker
    try:
        nonce = bytes.fromhex(str(hello["nonce"]).removeprefix("0x"))
        signature = bytes.fromhex(str(hello["signature"]).removeprefix("0x"))
        echoed = bytes.fromhex(str(hello["challenge"]).removeprefix("0x"))
        fields = (hello["group"], hello["stage"], hello["address"], hello["peer"])
    except (KeyError, ValueError, TypeError) as error:
        raise HandshakeError(f"malformed hello: {error}") from None
    if fields != (assignment.group_id, expected_stage, expected, my_address):
        raise HandshakeError(
            f"hello from stage {fields[1]} ({fields[2]}) of group {fields[0]!r}; this link expects stage "
            f"{expected_stage} ({expected}) of group {assignment.group_id!r}"
        )
    if echoed != challenge or len(nonce) < 16:
        raise HandshakeError("hello does not answer this connection's challenge")
    try:
        signer = recover_message(hello_message(*fields, nonce, challenge), signature)
    except SignatureError as error:
        raise HandshakeError(f"hello signature: {error}") from None
    if signer != expected:
        raise HandshakeError(f"hello signed by {signer}, not by {expected}")
    return nonce


class OutboundLink:
    """The link to `assignment.next_index`: queue messages with `send`; `connected` is set while it is up."""

    def __init__(
        self,
        key: SigningKey,
        assignment: Assignment,
        on_lost: Callable[[str], None],
        on_up: Callable[[], None] | None = None,
        max_backoff_s: float = 5.0,
    ):
        self.key, self.assignment = key, assignment
        self.peer = assignment.stages[assignment.next_index]
        self.on_lost, self.on_up = on_lost, on_up
        self.max_backoff_s = max_backoff_s
        self.connected = asyncio.Event()
        self.bytes_sent = 0
        self.frames_sent = 0
        self.last_error: str | None = None
        self._queue: asyncio.Queue[bytes | str | None] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"link->{self.peer.url}")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    def send(self, message: bytes | str) -> bool:
        """Queue a message; False (dropped) while the link is down."""
        if not self.connected.is_set():
            return False
        self._queue.put_nowait(message)
        return True

    async def _run(self) -> None:
        backoff = 0.05
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=HANDSHAKE_TIMEOUT_S)) as session:
            while not self._closing:
                try:
                    async with session.ws_connect(
                        self.peer.url + LINK_PATH, max_msg_size=MAX_MESSAGE_BYTES, heartbeat=30.0, compress=0
                    ) as ws:
                        await self._handshake(ws)
                        backoff = 0.05
                        self.last_error = None
                        self._queue = asyncio.Queue()
                        self.connected.set()
                        log.info("stage %d linked to stage %d at %s", self.assignment.stage_index,
                                 self.assignment.next_index, self.peer.url)
                        if self.on_up:
                            self.on_up()
                        await self._pump(ws)
                        reason = f"stage {self.assignment.next_index} closed the link ({ws.close_code})"
                except asyncio.CancelledError:
                    raise
                except HandshakeError as error:
                    reason = f"handshake with stage {self.assignment.next_index} failed: {error}"
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError) as error:
                    reason = f"link to stage {self.assignment.next_index} at {self.peer.url}: {type(error).__name__}: {error}"
                was_up = self.connected.is_set()
                self.connected.clear()
                self.last_error = reason
                if was_up:
                    log.log(logging.INFO if self._closing or "(1001)" in reason else logging.WARNING, "%s", reason)
                    self.on_lost(reason)
                else:
                    log.debug("%s; retrying in %.2f s", reason, backoff)
                if self._closing:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _handshake(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        first = await ws.receive(timeout=HANDSHAKE_TIMEOUT_S)
        if first.type != aiohttp.WSMsgType.TEXT:
            raise HandshakeError(f"expected a challenge, got {first.type.name}: {first.data}")
        challenge_msg = first.json()
        if challenge_msg.get("type") == "refused":
            raise HandshakeError(challenge_msg.get("reason", "refused"))
        challenge = bytes.fromhex(str(challenge_msg.get("nonce", "")).removeprefix("0x"))
        nonce = os.urandom(16)
        await ws.send_json(sign_hello(self.key, self.assignment, self.peer.worker, nonce, challenge))
        answer = await ws.receive(timeout=HANDSHAKE_TIMEOUT_S)
        if answer.type != aiohttp.WSMsgType.TEXT:
            raise HandshakeError(f"no answer to the hello ({answer.type.name}: {answer.extra or answer.data})")
        reply = answer.json()
        if reply.get("type") == "refused":
            raise HandshakeError(reply.get("reason", "refused"))
        check_hello(reply, self.assignment, self.assignment.next_index, self.key.address, nonce)

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        reader = asyncio.get_running_loop().create_task(ws.receive())  # the peer only ever closes
        try:
            while True:
                getter = asyncio.get_running_loop().create_task(self._queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    getter.cancel()
                    return
                message = getter.result()
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_str(message)
                self.bytes_sent += len(message)
                self.frames_sent += 1
        finally:
            reader.cancel()
