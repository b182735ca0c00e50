"""A stage server's place in its group's ring: taking an assignment (load the layers unless they are loaded,
point the link to the next stage), giving it up, and accepting the link from the previous stage (link.py says
how a link is opened and checked).

`RingPlace` is a part of `StageServer` (server.py), whose `__init__` sets the state these methods use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from node.pipeline.assignment import Assignment, AssignmentError
from node.pipeline.engine import StageEngine
from node.pipeline.inbox import InboxFull
from node.pipeline.job_handle import PipelineError
from node.pipeline.link import (
    MAX_MESSAGE_BYTES,
    REFUSED_HEADER,
    HandshakeError,
    OutboundLink,
    challenge_of,
    check_hello,
    hello_of,
    sign_hello,
)
from node.pipeline.weights import load_stage, model_id
from node.pipeline.wire import WIRE_DTYPES

log = logging.getLogger("stagewise.pipeline")


class RingPlace:
    """StageServer's assignment and links (mixed into server.StageServer)."""

    def peer_urls(self) -> dict[str, str]:
        return {s.worker: s.url for s in self.assignment.stages} if self.assignment else {}

    @property
    def link_up(self) -> bool:
        return self._outbound is not None and self._outbound.connected.is_set()

    async def wait_linked(self, timeout_s: float = 30.0) -> None:
        """Wait until the link to the next stage is up (the previous stage's link is its own business)."""
        if self.assignment is None:
            raise PipelineError(409, "not_assigned", "no stage assigned")
        if self.assignment.num_stages == 1:
            return
        await asyncio.wait_for(self._outbound.connected.wait(), timeout_s)

    # ------------------------------------------------------------------------------------------ assignment

    async def assign(self, assignment: Assignment) -> None:
        """Serve `assignment`: load the layers (unless already loaded), (re)point the links."""
        if assignment.me.worker != self.key.address:
            raise AssignmentError(f"stage {assignment.stage_index} is assigned to {assignment.me.worker}, this server is {self.key.address}")
        async with self._assign_lock:
            # the layers in the precision the group's jobs declare, unless this server was told to compute in
            # another dtype whatever they declare (`dtype`: what the tests' precision cheat does)
            dtype = self.dtype if self.dtype is not None else WIRE_DTYPES[assignment.precision]
            wanted = (assignment.model_id, assignment.me.layer_start, assignment.me.layer_end, dtype)
            old = self.assignment
            if self._loaded != wanted or self.engine is None:
                model_dir = await self._find_model(assignment.model_id)
                started = time.monotonic()
                model = await asyncio.get_running_loop().run_in_executor(
                    self._executor,
                    lambda: load_stage(model_dir, wanted[1], wanted[2], attn_impl=self.attn_impl, dtype=dtype, device=self.device),
                )
                if self.on_loaded is not None:
                    self.on_loaded(model)
                if model.config.num_layers != assignment.stages[-1].layer_end:
                    raise AssignmentError(f"the group covers {assignment.stages[-1].layer_end} layers, the model has {model.config.num_layers}")
                log.info("loaded layers [%d, %d) of %s in %s in %.1f s", wanted[1], wanted[2], model_dir, dtype,
                         time.monotonic() - started)
                self._fail_all("the stage was reassigned")
                self.engine = StageEngine(model, assignment, self.key, self.tamper, self.cheat)
                self._loaded = wanted
            else:
                if old is not None and (old.group_id, old.stage_index, old.num_stages) != (assignment.group_id, assignment.stage_index, assignment.num_stages):
                    self._fail_all("the stage was reassigned")
                self.engine.assignment = assignment
            self.assignment = assignment
            relink = old is None or old.stages[old.next_index] != assignment.stages[assignment.next_index] or old.group_id != assignment.group_id
            if relink or self._outbound is None:
                await self._close_outbound()
                if assignment.num_stages > 1:
                    self._outbound = OutboundLink(
                        self.key, assignment, on_lost=self._on_outbound_lost, max_queued_bytes=self.max_send_queue_bytes,
                        stall_s=self.stall_timeout_s,
                    )
                    self._outbound.start()
            if old is not None and old.stages[old.previous_index] != assignment.stages[assignment.previous_index]:
                await self._close_inbound("the previous stage was replaced")

    async def release(self) -> None:
        async with self._assign_lock:
            self._fail_all("the stage was released")
            await self._close_links()
            self.assignment, self.engine, self._loaded = None, None, None

    async def _find_model(self, wanted: str) -> Path:
        for directory in self.model_dirs:
            if directory not in self._model_ids:
                self._model_ids[directory] = await asyncio.get_running_loop().run_in_executor(None, model_id, directory)
            if self._model_ids[directory] == wanted:
                return directory
        raise PipelineError(404, "unknown_model", f"model {wanted} is not among this server's model directories")

    async def _close_outbound(self) -> None:
        if self._outbound is not None:
            link, self._outbound = self._outbound, None
            await link.close()

    async def _close_inbound(self, reason: str) -> None:
        if self._inbound_ws is not None and not self._inbound_ws.closed:
            await self._inbound_ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=reason.encode()[:120])

    async def _close_links(self) -> None:
        await self._close_outbound()
        await self._close_inbound("the stage is closing")

    def _require_assignment(self) -> Assignment:
        if self.assignment is None or self.engine is None:
            raise PipelineError(409, "not_assigned", "this stage server has no assignment yet")
        return self.assignment

    def _on_outbound_lost(self, reason: str) -> None:
        self._inbox.append("lost", reason)
        self._wake.set()

    # ------------------------------------------------------------------------------------------ the inbound link

    async def _http_link_challenge(self, request: web.Request) -> web.Response:
        return web.json_response({"challenge": "0x" + self._challenges.issue().hex()})

    async def _http_link(self, request: web.Request) -> web.StreamResponse:
        """The link from the previous stage: its hello is checked before the upgrade (see link.py)."""
        a = self.assignment
        try:
            if a is None or a.num_stages == 1:
                raise HandshakeError("this stage server has no multi-stage assignment")
            hello = hello_of(request.headers)
            challenge = challenge_of(hello)
            if not self._challenges.fresh(challenge):
                raise HandshakeError("the hello answers no open challenge of this server (expired or used)")
            nonce = check_hello(hello, a, a.previous_index, self.key.address, challenge)
            self._challenges.spend(challenge)
        except HandshakeError as error:
            log.warning("refused a link from %s: %s", request.remote, error)
            reason = "".join(c if " " <= c <= "~" else "?" for c in str(error)[:300])  # the peer wrote part of it
            return web.json_response(
                {"error": {"code": "link_refused", "message": reason}}, status=403, headers={REFUSED_HEADER: reason}
            )
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=30.0, compress=False)
        await ws.prepare(request)
        previous, self._inbound_ws = self._inbound_ws, ws
        if previous is not None and not previous.closed:
            await previous.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"replaced by a new link")
        await ws.send_json(sign_hello(self.key, a, a.stages[a.previous_index].worker, os.urandom(16), nonce))
        log.info("stage %d accepted the link from stage %d", a.stage_index, a.previous_index)
        reason = "closed"
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    self.bytes_received += len(message.data)
                    self.frames_received += 1
                    self._inbox.append("frame", message.data, len(message.data))
                elif message.type == aiohttp.WSMsgType.TEXT:
                    self.bytes_received += len(message.data)
                    # kept as text, decoded when applied: decoded JSON can take 20 times its text's memory
                    self._inbox.append("text", message.data, len(message.data))
                else:
                    reason = f"{message.type.name}: {ws.exception()}"
                    break
                self._wake.set()
                try:
                    await self._inbox.wait_for_room()  # not reading meanwhile holds the sender back
                except InboxFull as full:
                    reason = f"stage {a.previous_index} overfilled this stage's inbox: {full}"
                    log.warning("dropping the link: %s", reason)
                    await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"inbox overfilled")
                    break
        finally:
            if self._inbound_ws is ws:
                self._inbound_ws = None
                if not self._stopping:
                    self._inbox.append("lost", f"the link from stage {a.previous_index} dropped ({reason})")
                    self._wake.set()
        return ws

