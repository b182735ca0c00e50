"""The long-lived WebSocket from a stage to the next one, and the handshake both ends run.

A stage opens one link to the stage after it (the last stage to stage 0) and keeps it: frames for every
sequence of the group share it. `OutboundLink` connects, proves who it is, then sends what the stage queues,
in order. When the connection drops it tells the stage (whose sequences in flight on it fail) and reconnects
with exponential backoff until the stage stops or is re-pointed at another neighbour.

The handshake finishes before the WebSocket opens, so that nobody unauthenticated can send a frame (a
WebSocket buffers a whole message, up to its size limit, before anyone can look at it):

1. `GET /v1/link/challenge` gives a fresh challenge (good for `CHALLENGE_TTL_S`, once; see `Challenges`);
2. the upgrade request carries the signed hello (see handoff.py) in the `Stagewise-Hello` header; the
   server checks it before upgrading and refuses with 403 (the reason in `Stagewise-Refused`);
3. the server's first message is its own hello, answering the client's nonce. The server never sends
   anything else, so the client's side of the socket takes control-sized messages only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import struct
import time
from collections.abc import Callable, Mapping

import aiohttp

from ledger import json_input
from ledger.errors import StagewiseError
from node.pipeline.assignment import Assignment
from node.protocol.handoff import hello_message
from node.protocol.signing import SignatureError, SigningKey, recover_message

log = logging.getLogger("stagewise.pipeline.link")

LINK_PATH = "/v1/link"
CHALLENGE_PATH = LINK_PATH + "/challenge"
HELLO_HEADER = "Stagewise-Hello"
REFUSED_HEADER = "Stagewise-Refused"
HANDSHAKE_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 256 << 20  # a frame from the authenticated neighbour
MAX_CONTROL_BYTES = 64 << 10  # anything before the hello is checked, and all the server ever sends back
CHALLENGE_TTL_S = 30.0
MAX_QUEUED_BYTES = 512 << 20  # sent but not yet taken by the next stage: over it for long, the link is dropped


class HandshakeError(StagewiseError):
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
        nonce = json_input.hex_bytes(hello["nonce"], "hello nonce", max_length=64)
        signature = json_input.hex_bytes(hello["signature"], "hello signature", max_length=65)
        echoed = json_input.hex_bytes(hello["challenge"], "hello challenge", max_length=64)
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


class Challenges:
    """Challenges a stage server hands out: stateless until answered, so asking for many evicts nobody's.

    A challenge is `time (ms) | random | MAC` under a secret of this server; it is good for `ttl_s` and once:
    only a challenge whose hello verified is remembered (`spend`), until it would have expired anyway.
    """

    def __init__(self, ttl_s: float = CHALLENGE_TTL_S, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s, self.clock = ttl_s, clock
        self._secret = os.urandom(32)
        self._spent: dict[bytes, float] = {}

    def issue(self) -> bytes:
        body = struct.pack(">Q", int(self.clock() * 1000)) + os.urandom(8)
        return body + self._mac(body)

    def fresh(self, challenge: bytes) -> bool:
        """True for a challenge this server issued, not expired and not yet spent."""
        if len(challenge) != 32 or not hmac.compare_digest(challenge[16:], self._mac(challenge[:16])):
            return False
        issued = struct.unpack(">Q", challenge[:8])[0] / 1000
        return 0 <= self.clock() - issued <= self.ttl_s and challenge not in self._spent

    def spend(self, challenge: bytes) -> None:
        """Remember a challenge a verified hello answered, so that hello cannot be replayed."""
        now = self.clock()
        self._spent = {c: until for c, until in self._spent.items() if until > now}
        self._spent[challenge] = now + self.ttl_s

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:16]


def hello_of(headers: Mapping[str, str]) -> dict:
    """The hello in an upgrade request's headers, parsed by the bounded parser (HandshakeError if absent/bad)."""
    text = headers.get(HELLO_HEADER)
    if not text:
        raise HandshakeError(f"no {HELLO_HEADER} header: ask {CHALLENGE_PATH} for a challenge and sign a hello")
    try:
        hello = json_input.loads(text, max_bytes=MAX_CONTROL_BYTES, max_depth=2)
    except json_input.JsonInputError as error:
        raise HandshakeError(f"the hello is not JSON: {error}") from None
    if not isinstance(hello, dict):
        raise HandshakeError("the hello is not a JSON object")
    return hello


def challenge_of(hello: dict) -> bytes:
    try:
        return json_input.hex_bytes(hello["challenge"], "hello challenge", max_length=64)
    except (KeyError, ValueError) as error:
        raise HandshakeError(f"malformed hello: {error}") from None


class OutboundLink:
    """The link to `assignment.next_index`: queue messages with `send`; `connected` is set while it is up."""

    def __init__(
        self,
        key: SigningKey,
        assignment: Assignment,
        on_lost: Callable[[str], None],
        on_up: Callable[[], None] | None = None,
        max_backoff_s: float = 5.0,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        stall_s: float = 120.0,
    ):
        self.key, self.assignment = key, assignment
        self.max_queued_bytes, self.stall_s = max_queued_bytes, stall_s
        self._over_since: float | None = None
        self.queued_bytes = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
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
        self._slow = False
        self._closers: set[asyncio.Task] = set()

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
        """Queue a message; False (dropped) while the link is down. A next stage that does not take what it
        is sent is dropped, as if it had closed the link: when the queue has stayed over `max_queued_bytes`
        for `stall_s`, or would pass twice that. A message alone in the queue is never refused."""
        if not self.connected.is_set():
            return False
        after = self.queued_bytes + len(message)
        if self.queued_bytes and after > self.max_queued_bytes:
            now = time.monotonic()
            self._over_since = self._over_since or now
            if after > 2 * self.max_queued_bytes or now - self._over_since > self.stall_s:
                self._drop_slow_reader()
                return False
        self.queued_bytes = after
        self._queue.put_nowait(message)
        return True

    def _drop_slow_reader(self) -> None:
        ws, self._ws = self._ws, None
        self.connected.clear()
        if ws is not None and not ws.closed:
            log.warning("stage %d does not take what it is sent (%d bytes waiting): dropping the link",
                        self.assignment.next_index, self.queued_bytes)
            self._slow = True
            closing = asyncio.get_running_loop().create_task(ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION))
            self._closers.add(closing)  # held until done: a task nobody holds may be collected while pending
            closing.add_done_callback(self._closers.discard)

    async def _run(self) -> None:
        backoff = 0.05
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=HANDSHAKE_TIMEOUT_S)) as session:
            while not self._closing:
                try:
                    nonce = os.urandom(16)
                    hello = await self._hello(session, nonce)
                    async with session.ws_connect(
                        self.peer.url + LINK_PATH, headers={HELLO_HEADER: json.dumps(hello)},
                        max_msg_size=MAX_CONTROL_BYTES, heartbeat=30.0, compress=0,
                    ) as ws:
                        await self._answer(ws, nonce)
                        backoff = 0.05
                        self.last_error = None
                        self._queue = asyncio.Queue()
                        self.queued_bytes = 0
                        self._over_since = None
                        self._slow = False
                        self._ws = ws
                        self.connected.set()
                        log.info("stage %d linked to stage %d at %s", self.assignment.stage_index,
                                 self.assignment.next_index, self.peer.url)
                        if self.on_up:
                            self.on_up()
                        why = await self._pump(ws)
                        reason = f"stage {self.assignment.next_index} closed the link ({ws.close_code}{why})"
                        if self._slow:
                            reason = f"stage {self.assignment.next_index} did not take what it was sent: link dropped"
                except asyncio.CancelledError:
                    raise
                except HandshakeError as error:
                    reason = f"handshake with stage {self.assignment.next_index} failed: {error}"
                except aiohttp.WSServerHandshakeError as error:
                    refused = (error.headers or {}).get(REFUSED_HEADER) or f"HTTP {error.status}"
                    reason = f"handshake with stage {self.assignment.next_index} failed: {refused}"
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, OSError) as error:
                    reason = f"link to stage {self.assignment.next_index} at {self.peer.url}: {type(error).__name__}: {error}"
                was_up = self.connected.is_set() or self._slow  # a dropped slow reader was up: say so
                self.connected.clear()
                self.last_error = reason
                if was_up:
                    log.log(logging.INFO if self._closing or "(1001" in reason else logging.WARNING, "%s", reason)
                    self.on_lost(reason)
                else:
                    log.debug("%s; retrying in %.2f s", reason, backoff)
                if self._closing:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _hello(self, session: aiohttp.ClientSession, nonce: bytes) -> dict:
        """Our signed hello, answering a fresh challenge from the next stage."""
        async with session.get(
            self.peer.url + CHALLENGE_PATH, timeout=aiohttp.ClientTimeout(total=HANDSHAKE_TIMEOUT_S)
        ) as response:
            try:
                answer = await json_input.read_json(response, max_bytes=MAX_CONTROL_BYTES, max_depth=2)
                if response.status != 200:
                    raise HandshakeError(str(answer["error"]["message"]))
                challenge = json_input.hex_bytes(answer["challenge"], "challenge", max_length=64)
            except (ValueError, KeyError, TypeError) as error:
                raise HandshakeError(f"no challenge from {self.peer.url} (HTTP {response.status}: {error})") from None
        return sign_hello(self.key, self.assignment, self.peer.worker, nonce, challenge)

    async def _answer(self, ws: aiohttp.ClientWebSocketResponse, nonce: bytes) -> None:
        """Check that the server's first message is the next stage's hello, answering our nonce."""
        answer = await ws.receive(timeout=HANDSHAKE_TIMEOUT_S)
        if answer.type != aiohttp.WSMsgType.TEXT:
            raise HandshakeError(f"no answer to the hello ({answer.type.name}: {answer.extra or answer.data})")
        try:
            reply = json_input.loads(answer.data, max_bytes=MAX_CONTROL_BYTES, max_depth=2)
        except json_input.JsonInputError as error:
            raise HandshakeError(f"the answer to the hello is not JSON: {error}") from None
        if not isinstance(reply, dict):
            raise HandshakeError("the answer to the hello is not a JSON object")
        check_hello(reply, self.assignment, self.assignment.next_index, self.key.address, nonce)

    async def _pump(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Send what is queued until the peer closes; returns its close reason (": why", or "")."""
        reader = asyncio.get_running_loop().create_task(ws.receive())  # the peer only ever closes
        getter: asyncio.Task | None = None
        try:
            while True:
                getter = asyncio.get_running_loop().create_task(self._queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    getter.cancel()
                    closing = reader.result()
                    extra = closing.extra if closing.type == aiohttp.WSMsgType.CLOSE else None
                    return f": {str(extra)[:200]}" if extra else ""
                message = getter.result()
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_str(message)
                self.queued_bytes -= len(message)
                if self.queued_bytes <= self.max_queued_bytes:
                    self._over_since = None
                self.bytes_sent += len(message)
                self.frames_sent += 1
        finally:
            # both, also when the link is closed (cancelled) while waiting: a task left pending on the old queue
            # would be destroyed pending when collected
            for task in (reader, getter):
                if task is not None and not task.done():
                    task.cancel()
            await asyncio.gather(reader, *([getter] if getter is not None else []), return_exceptions=True)
