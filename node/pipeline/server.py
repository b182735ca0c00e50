"""A stage server: one process hosting one stage of one group, over aiohttp.

The orchestrator assigns a stage (`PUT /v1/assignment`, signed by an orchestrator key the server trusts,
see control.py; so are `DELETE /v1/assignment` and `POST /v1/jobs`; reads are public): the server loads that layer range of the model
whose `model_id` the assignment names (from its `model_dirs`), opens its link to the next stage and accepts
one from the previous stage (link.py). Jobs enter at stage 0 (`POST /v1/jobs`), travel the ring
0 -> 1 -> ... -> S-1 -> 0 as hidden states, and come back to stage 0 as sampled tokens.

The schedule is asynchronous and micro-batched: stage 0 runs the sequences whose next token has arrived in
micro-batches of about in-flight / S sequences, so while it embeds one micro-batch the other stages work on
the others; every stage batches whatever has arrived. Sequences join and leave between steps. Compute runs on
one thread per stage, so the event loop keeps sending and receiving while the layers run.

Each job ends in order: the last stage samples a stop token (or the budget runs out) and tells stage 0;
stage 0 closes its proofs and sends `end` down the ring; every stage checks its predecessor's last proof
chunk, closes its own, hands its `StageResult` to the `on_result` hook (and to
`GET /v1/jobs/{job_id}/stage-result`) and passes `end` on; the last stage answers stage 0 with `closed`.
A failure (handoff mismatch, malformed frame, lost or stalled neighbour) fails only the sequences it touches
and travels the ring as `abort`, with a summary of the complaint when there is one (the evidence itself
goes to the complaining stage's `on_complaint` hook).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import resource
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import torch
from aiohttp import web

from ledger import json_input
from node.protocol.job import JobSpec, JobSpecError
from node.pipeline.assignment import Assignment, AssignmentError
from node.pipeline.control import ControlGuard, ControlRefused
from node.pipeline.engine import StageEngine, StepInput, Tamper, fail, finish_reason
from node.pipeline.handoff import Complaint, tokens_message
from node.pipeline.model import StageModel
from node.http.limits import HttpGuard, HttpLimits
from node.pipeline.inbox import DEFAULT_MAX_BYTES as DEFAULT_MAX_INBOX_BYTES
from node.pipeline.inbox import Inbox, InboxFull
from node.pipeline.link import (
    CHALLENGE_PATH, LINK_PATH, MAX_MESSAGE_BYTES, MAX_QUEUED_BYTES, REFUSED_HEADER, Challenges, HandshakeError, OutboundLink, challenge_of,
    check_hello, hello_of, sign_hello,
)
from node.pipeline.sequence import DONE, FAILED, SAMPLED, SequenceFailed, SequenceState, StageResult
from node.pipeline.started_jobs import StartedJobs
from node.pipeline.weights import load_stage, model_id
from node.pipeline.wire import (
    FrameError, decode_frame, decode_message, encode_frame, encode_message, frame_job_ids, hex_bytes,
)
from node.protocol.signing import SignatureError, SigningKey, recover_message

log = logging.getLogger("stagewise.pipeline")

ResultHook = Callable[[StageResult], Any]
ComplaintHook = Callable[[Complaint], Any]


class PipelineError(Exception):
    """A request the stage server cannot serve: `status` and `code` for the JSON error."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class JobHandle:
    """Stage 0's view of a submitted job: stream `events()` or await `wait()`.

    Events are dicts: {"tokens": [...]} as tokens arrive, then {"done": true, "finish_reason",
    "output_token_ids"} once every stage closed the job, or {"error": {...}, "complaint": {...} | None}.
    """

    job_id: str
    spec: JobSpec
    output: list[int] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None
    complaint: dict[str, Any] | None = None  # Complaint.summary() when a handoff complaint failed the job
    finish_reason: str | None = None
    _events: list[dict] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _push(self, event: dict) -> None:
        self._events.append(event)
        self._changed.set()

    async def events(self):
        index = 0
        while True:
            while index < len(self._events):
                event = self._events[index]
                index += 1
                yield event
                if "done" in event or "error" in event:
                    return
            self._changed.clear()
            if index < len(self._events):
                continue
            await self._changed.wait()

    async def wait(self) -> tuple[int, ...]:
        """The output token ids; raises PipelineError when the job failed."""
        await self.finished.wait()
        if self.error is not None:
            raise PipelineError(502, "job_failed", self.error)
        return tuple(self.output)


class StageServer:
    def __init__(
        self,
        key: SigningKey,
        host: str = "127.0.0.1",
        port: int = 0,
        model_dirs: Iterable[str | Path] = (),
        device: str = "cpu",
        on_result: ResultHook | None = None,
        extra_routes: Iterable[Any] = (),
        *,
        attn_impl: str = "sdpa",
        dtype: torch.dtype = torch.float32,
        micro_batches: int | None = None,
        max_prefill_rows: int = 4096,
        stall_timeout_s: float = 120.0,
        on_complaint: ComplaintHook | None = None,
        tamper: Tamper | None = None,
        cheat: Any = None,
        keep_finished: int = 4096,
        public_url: str | None = None,
        on_loaded: Callable[[StageModel], None] | None = None,
        controllers: Iterable[str] = (),
        started: StartedJobs | None = None,
        max_inbox_bytes: int = DEFAULT_MAX_INBOX_BYTES,
        max_send_queue_bytes: int = MAX_QUEUED_BYTES,
        http_limits: HttpLimits = HttpLimits(),
    ):
        """`controllers`: the orchestrator addresses whose signed requests may assign, release and start jobs
        here (node/pipeline/control.py). With none, every control request over HTTP is refused; the Python
        methods `assign`, `release` and `submit` are the host process's own and need no signature."""
        self.key = key
        self.started = started if started is not None else StartedJobs()  # every job id opened here, never twice
        self.control = ControlGuard(key.address, frozenset(controllers))
        self.on_loaded = on_loaded
        self.host, self.port = host, port
        self.model_dirs = [Path(d) for d in model_dirs]
        self.device, self.attn_impl, self.dtype = device, attn_impl, dtype
        self.on_result, self.on_complaint = on_result, on_complaint
        self.extra_routes = list(extra_routes)
        self.micro_batches = micro_batches
        self.max_prefill_rows = max_prefill_rows
        self.stall_timeout_s = stall_timeout_s
        self.tamper, self.cheat = tamper, cheat
        self.keep_finished = keep_finished
        self.public_url = public_url
        self.assignment: Assignment | None = None
        self.engine: StageEngine | None = None
        self._loaded: tuple[str, int, int] | None = None
        self._model_ids: dict[Path, str] = {}
        self.sequences: dict[str, SequenceState] = {}
        self._active: dict[str, SequenceState] = {}  # the ones not yet known to be finished
        self.results: dict[str, StageResult] = {}
        self.handles: dict[str, JobHandle] = {}
        self._finished_order: collections.deque[str] = collections.deque()
        self._ready: collections.OrderedDict[str, StepInput] = collections.OrderedDict()  # stage 0: next inputs
        self._batch_counter = 0
        self._cycle_s = 0.05  # stage 0: moving average of a token's trip round the ring
        self._coalescing = False
        self.max_send_queue_bytes = max_send_queue_bytes  # what the next stage may leave untaken (link.py)
        self._inbox = Inbox(max_inbox_bytes, stall_timeout_s)
        self._wake = asyncio.Event()
        self._outbound: OutboundLink | None = None
        self._inbound_ws: web.WebSocketResponse | None = None
        self._challenges = Challenges()
        self.http_guard = HttpGuard(http_limits)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage-compute")
        self._stepping: set[str] = set()  # jobs in the step now running (their caches stay until it ends)
        self._assign_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self.bytes_received = 0
        self.frames_received = 0
        self.url = ""

    # ------------------------------------------------------------------------------------------ lifecycle

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.http_guard.middleware], client_max_size=16 << 20)
        app.add_routes([
            web.get("/health", self._http_health),
            web.get("/v1/assignment", self._http_get_assignment),
            web.put("/v1/assignment", self._http_put_assignment),
            web.delete("/v1/assignment", self._http_delete_assignment),
            web.post("/v1/jobs", self._http_post_job),
            web.get("/v1/jobs/{job_id}", self._http_get_job),
            web.get("/v1/jobs/{job_id}/stream", self._http_stream_job),
            web.get("/v1/jobs/{job_id}/stage-result", self._http_stage_result),
            web.get("/v1/stats", self._http_stats),
            web.get(CHALLENGE_PATH, self._http_link_challenge),
            web.get(LINK_PATH, self._http_link),
        ])
        if self.extra_routes:
            app.add_routes(self.extra_routes)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        self.http_guard(self._runner)
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for
        self.port = port
        self.url = self.public_url or f"http://{self.host}:{port}"
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._schedule(), name="stage-schedule"),
                       loop.create_task(self._watch_stalls(), name="stage-stalls")]
        log.info("stage server %s listening on %s", self.key.address, self.url)

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop taking jobs; give in-flight sequences `grace_s` seconds, fail the rest; close links."""
        self._stopping = True
        deadline = time.monotonic() + grace_s
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for seq in self._live():
            self._fail(seq, SequenceFailed("the stage server is shutting down"))
        await self._close_links()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._runner is not None:
            await self._runner.cleanup()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def in_flight(self) -> int:
        return sum(1 for seq in self._live() if seq.active)

    def _live(self) -> list[SequenceState]:
        """Sequences that may still be active (finished ones are pruned from this view as they are seen)."""
        for job in [job for job, seq in self._active.items() if not seq.active]:
            del self._active[job]
        return list(self._active.values())

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
            wanted = (assignment.model_id, assignment.me.layer_start, assignment.me.layer_end)
            old = self.assignment
            if self._loaded != wanted or self.engine is None:
                model_dir = await self._find_model(assignment.model_id)
                started = time.monotonic()
                model = await asyncio.get_running_loop().run_in_executor(
                    self._executor,
                    lambda: load_stage(model_dir, wanted[1], wanted[2], attn_impl=self.attn_impl, dtype=self.dtype, device=self.device),
                )
                if self.on_loaded is not None:
                    self.on_loaded(model)
                if model.config.num_layers != assignment.stages[-1].layer_end:
                    raise AssignmentError(f"the group covers {assignment.stages[-1].layer_end} layers, the model has {model.config.num_layers}")
                log.info("loaded layers [%d, %d) of %s in %.1f s", wanted[1], wanted[2], model_dir, time.monotonic() - started)
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

    # ------------------------------------------------------------------------------------------ jobs at stage 0

    def submit(self, spec: JobSpec) -> JobHandle:
        """Start a job on this group (stage 0 only); returns its handle at once."""
        a = self._require_assignment()
        if self._stopping:
            raise PipelineError(503, "stopping", "the stage server is shutting down")
        if not a.is_first:
            raise PipelineError(409, "not_stage_zero", f"jobs enter at stage 0; this is stage {a.stage_index}")
        try:
            a.check_spec(spec)
        except AssignmentError as error:
            raise PipelineError(422, "wrong_group", str(error)) from None
        if a.num_stages > 1 and not self.link_up:
            raise PipelineError(503, "link_down", f"stage 1 is not connected: {self._outbound.last_error if self._outbound else 'no link'}")
        if a.num_stages > 1 and (self._inbound_ws is None or self._inbound_ws.closed):
            raise PipelineError(503, "link_down", f"the last stage ({a.num_stages - 1}) is not connected to stage 0: no way back for tokens")
        job = spec.job_id_hex
        if job in self.started or job in self.sequences:  # an honest stage signs one claim per chunk of a job (I2)
            raise PipelineError(409, "duplicate_job", f"job {job} was already started here; a job id runs once")
        try:
            seq = self.engine.open(spec)
        except SequenceFailed as error:
            raise PipelineError(422, "bad_job", error.reason) from None
        self.started.add(job)
        self.sequences[job] = self._active[job] = seq
        handle = JobHandle(job, spec)
        self.handles[job] = handle
        self._send_text(encode_message("job", spec=spec.to_dict()))
        self._ready[job] = StepInput(seq, 0, torch.tensor(spec.prompt_token_ids, dtype=torch.long))
        self._wake.set()
        return handle

    # ------------------------------------------------------------------------------------------ the schedule

    async def _schedule(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._run_ready_work()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not leave the stage deaf: log it, fail what is live, go on
                log.exception("stage schedule error")
                self._fail_all("internal error in the stage schedule (see the stage's log)")

    async def _run_ready_work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = self._take_work()
            if items and self.assignment.is_first and self._should_coalesce(items):
                items = await self._coalesce(items)
            if not items:
                break
            engine = self.engine
            self._stepping = {item.seq.job_id_hex for item in items}
            try:
                outputs = await loop.run_in_executor(self._executor, engine.step, items)
            except Exception as error:  # a bug or an OOM must not take the stage down
                log.exception("step failed")
                self._stepping = set()
                for item in items:
                    if item.seq.active:
                        self._fail(item.seq, SequenceFailed(f"stage {self.assignment.stage_index} step failed: {error}"))
                continue
            self._stepping = set()
            for item in items:
                if not item.seq.active:
                    item.seq.cache = None
            if engine is self.engine:
                self._after_step(outputs)

    def _take_work(self) -> list[StepInput]:
        """Apply queued messages in order; return the next micro-batch (possibly empty)."""
        if self.engine is None:
            self._inbox.clear()
            return []
        batch: list[StepInput] = []
        while self._inbox:
            kind, payload = self._inbox.peek()
            if kind == "text":
                try:
                    kind, payload = "msg", decode_message(payload)
                except FrameError as error:
                    self._inbox.popleft()
                    log.warning("bad control message from stage %d: %s", self.assignment.previous_index, error)
                    continue
            if kind == "frame":
                self._inbox.popleft()
                batch.extend(self._frame_items(payload))
                continue
            if batch and kind == "msg" and payload.get("type") in ("end", "abort"):
                break  # finish the rows that came before it first
            self._inbox.popleft()
            self._handle(kind, payload)
        if self.assignment.is_first:
            return self._micro_batch() if not self._coalescing else []
        return batch

    def _micro_batch(self) -> list[StepInput]:
        """Stage 0: the next micro-batch, about in-flight / micro_batches sequences, oldest first."""
        if not self._ready:
            return []
        return self._take_batch(max(1, math.ceil(max(1, self.in_flight()) / self._groups)))

    def _take_batch(self, size: int | None = None) -> list[StepInput]:
        """Sequences from the front of the ready queue, at most `size` (None: any number) within the prefill
        row budget, numbered as one micro-batch."""
        batch, rows = [], 0
        for job in list(self._ready):
            count = self._ready[job].inputs.shape[0]
            if batch and ((size is not None and len(batch) >= size) or rows + count > self.max_prefill_rows):
                break
            batch.append(self._ready.pop(job))
            rows += count
        self._batch_counter += 1
        now = time.monotonic()
        for item in batch:
            item.seq.batch, item.seq.dispatched = self._batch_counter, now
        return batch

    @property
    def _groups(self) -> int:
        return self.micro_batches or self.assignment.num_stages

    def _batches_in_flight(self, exclude: Iterable[StepInput] = ()) -> set[int]:
        taken = {item.seq.job_id_hex for item in exclude}
        return {seq.batch for seq in self._live()
                if seq.job_id_hex not in self._ready and seq.job_id_hex not in taken and seq.batch}

    def _should_coalesce(self, items: list[StepInput]) -> bool:
        return len(self._batches_in_flight(exclude=items)) >= self._groups

    async def _coalesce(self, items: list[StepInput]) -> list[StepInput]:
        """Too many micro-batches are circulating: hold this one back (at most about one ring cycle) until
        the next one comes round, and run them together. Merged groups stay merged, so this happens once."""
        for item in reversed(items):  # back to the front of the ready queue, in order
            self._ready[item.seq.job_id_hex] = item
            self._ready.move_to_end(item.seq.job_id_hex, last=False)
        deadline = time.monotonic() + min(1.0, max(0.002, self._cycle_s))
        waiting = set(self._batches_in_flight())
        self._coalescing = True
        try:
            while time.monotonic() < deadline:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), deadline - time.monotonic())
                except asyncio.TimeoutError:
                    break
                self._take_work()  # applies arriving token frames (stage 0 computes nothing here)
                if self._batches_in_flight() != waiting:
                    break
        finally:
            self._coalescing = False
        return self._take_batch()  # everything ready now, up to the prefill row budget

    def _frame_items(self, data: bytes) -> list[StepInput]:
        try:
            frame = decode_frame(data, self.engine.model.config.hidden_size)
        except FrameError as error:
            self._malformed(data, str(error))
            return []
        items = []
        for entry, rows in frame.split():
            seq = self.sequences.get("0x" + entry.job_id.hex())
            if seq is None or not seq.active:
                continue  # already failed here; its abort is on its way round
            items.append(StepInput(seq, entry.start, rows))
        return items

    def _malformed(self, data: bytes, reason: str) -> None:
        """A frame that does not decode fails the sequences its header names, or all when it names none."""
        named = [self.sequences.get("0x" + job.hex()) for job in frame_job_ids(data)]
        targets = [seq for seq in named if seq is not None] or self._live()
        log.warning("malformed frame from stage %d: %s", self.assignment.previous_index, reason)
        for seq in targets:
            if seq.active:
                self._fail(seq, SequenceFailed(f"malformed frame from stage {self.assignment.previous_index}: {reason}"))

    def _after_step(self, outputs) -> None:
        a = self.assignment
        entries, claims, tokens = [], [], []
        for out in outputs:
            seq = out.seq
            if not seq.active:
                continue
            if out.failure is not None:
                self._fail(seq, out.failure)
                continue
            if a.is_last:
                seq.output.append(out.token)
                reason = finish_reason(seq, out.token)
                if reason is None and seq.cache.length + 1 >= self.engine.model.config.max_position_embeddings:
                    reason = "length"
                if reason is not None:
                    seq.status, seq.finish_reason = SAMPLED, reason
                tokens.append([seq.job_id_hex, seq.cache.length, out.token, reason])
            else:
                entries.append((seq.job_id, out.start, out.rows))
                claims.extend((seq, claim) for claim in out.claims)
        if entries:
            self._send_bytes(encode_frame(entries, a.wire_dtype))
        for seq, (claim, signature) in claims:
            if seq.active:
                self._send_claim(claim, signature)
        if tokens:
            if a.num_stages == 1:
                self._apply_tokens(tokens)
            else:
                signature = self.key.sign_message(tokens_message(tokens))
                self._send_text(encode_message("tokens", entries=tokens, signature="0x" + signature.hex()))
        if not a.is_first:
            for out in outputs:
                if out.seq.active:
                    self._guard(out.seq, self.engine.check_claims, out.seq)

    # ------------------------------------------------------------------------------------------ messages

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "lost":
            self._fail_all(payload)
            return
        handler = getattr(self, "_on_" + payload["type"], None)
        if handler is None:
            log.warning("ignoring unknown message type %r from stage %d", payload["type"], self.assignment.previous_index)
            return
        try:
            handler(payload)
        except (FrameError, KeyError, TypeError, ValueError, JobSpecError) as error:
            job = payload.get("job")
            seq = self.sequences.get(job) if isinstance(job, str) else None
            log.warning("bad %r message from stage %d: %s", payload["type"], self.assignment.previous_index, error)
            if seq is not None and seq.active:
                self._fail(seq, SequenceFailed(f"malformed {payload['type']} message: {error}"))

    def _on_job(self, message: dict) -> None:
        spec = JobSpec.from_dict(message["spec"])
        job = spec.job_id_hex
        if job in self.started or job in self.sequences:  # a job id runs once here (started_jobs.py)
            if job in self.sequences and self.sequences[job].active:
                self._fail(self.sequences[job], SequenceFailed("job started twice"))
            else:
                self._forward_abort(job, SequenceFailed("job started twice"), self.assignment.stage_index)
            return
        try:
            self.assignment.check_spec(spec)
            seq = self.engine.open(spec)
        except (AssignmentError, SequenceFailed) as error:
            self.sequences[job] = refused = SequenceState(spec, spec.job_id, None, None, None)
            self._fail(refused, SequenceFailed(f"stage {self.assignment.stage_index} refuses the job: {error}"))
            return
        self.started.add(job)
        self.sequences[job] = self._active[job] = seq
        if not self.assignment.is_last:
            self._send_text(encode_message("job", spec=message["spec"]))

    def _on_proof(self, message: dict) -> None:
        seq = self._sequence(message)
        if seq is None:
            return
        chunk = message["chunk"]
        if not isinstance(chunk, int) or chunk < 0:
            raise ValueError("chunk must be a non-negative integer")
        proof = hex_bytes(message["proof"], "proof")
        digest = hex_bytes(message["digest"], "digest", 32)
        signature = hex_bytes(message["signature"], "signature", 65)
        self._guard(seq, self.engine.record_claim, seq, chunk, proof, digest, signature)
        if seq.active:
            self._guard(seq, self.engine.check_claims, seq)

    def _on_tokens(self, message: dict) -> None:
        """Stage 0: the last stage's sampled tokens; the frame's signature is checked before any is used."""
        entries = message["entries"]
        signature = hex_bytes(message["signature"], "signature", 65)
        if not isinstance(entries, list) or not all(isinstance(e, list) and len(e) == 4 for e in entries):
            raise ValueError("entries must be a list of [job, position, token, reason]")
        last = self.assignment.stages[-1].worker
        try:
            signer = recover_message(tokens_message(entries), signature)
        except SignatureError as error:
            signer = f"nobody ({error})"
        if signer != last:
            for entry in entries:
                seq = self.sequences.get(entry[0]) if isinstance(entry[0], str) else None
                if seq is not None and seq.active:
                    self._fail(seq, SequenceFailed(f"token frame signed by {signer}, not by the last stage {last}"))
            return
        self._apply_tokens(entries)

    def _apply_tokens(self, entries: list) -> None:
        for entry in entries:
            job, position, token, reason = entry
            seq = self.sequences.get(job)
            if seq is None or not seq.active:
                continue
            if position != seq.cache.length or not isinstance(token, int) or not 0 <= token < self.engine.model.config.vocab_size:
                self._fail(seq, SequenceFailed(f"token frame for position {position}, expected {seq.cache.length}"))
                continue
            if self.assignment.num_stages > 1:
                seq.output.append(token)
            seq.last_progress = time.monotonic()
            if seq.dispatched:
                self._cycle_s = 0.8 * self._cycle_s + 0.2 * (seq.last_progress - seq.dispatched)
            handle = self.handles.get(job)
            if handle is not None:
                handle.output.append(token)
                handle._push({"tokens": [token]})
            if reason is None:
                self._ready[job] = StepInput(seq, position, torch.tensor([token], dtype=torch.long))
            else:
                seq.finish_reason = reason
                self._end_here(seq, output=list(seq.output))
        self._wake.set()

    def _on_end(self, message: dict) -> None:
        seq = self._sequence(message)
        if seq is None:
            return
        output = message["output"]
        if not (isinstance(output, list) and all(isinstance(t, int) for t in output)):
            raise ValueError("output must be a list of token ids")
        if self.assignment.is_last and output != seq.output:
            self._fail(seq, SequenceFailed("stage 0 reports an output that differs from the tokens this stage sampled"))
            return
        seq.finish_reason = message.get("reason")
        self._end_here(seq, output)

    def _end_here(self, seq: SequenceState, output: list[int]) -> None:
        """Close this stage's part of a finished job and pass `end` (or, from the last stage, `closed`) on."""
        a = self.assignment
        try:
            self.engine.finish_inbound(seq)
            seq.output = list(output)
            claim = self.engine.finish_outbound(seq)
            result = self.engine.result(seq)
        except SequenceFailed as failure:
            self._fail(seq, failure)
            return
        if claim is not None:
            self._send_claim(*claim)
        seq.status, seq.cache = DONE, None
        self._ready.pop(seq.job_id_hex, None)
        self._publish(result)
        if a.num_stages == 1:
            self._on_closed({"job": seq.job_id_hex})
        elif a.is_last:
            self._send_text(encode_message("closed", job=seq.job_id_hex))
        else:
            self._send_text(encode_message("end", job=seq.job_id_hex, output=list(output), reason=seq.finish_reason))

    def _on_closed(self, message: dict) -> None:
        handle = self.handles.get(message["job"])
        if handle is not None and not handle.finished.is_set():
            handle.finish_reason = self.sequences[handle.job_id].finish_reason
            handle._push({"done": True, "finish_reason": handle.finish_reason, "output_token_ids": list(handle.output)})
            handle.finished.set()

    def _on_abort(self, message: dict) -> None:
        job, origin = message["job"], int(message["origin"])
        if not 0 <= origin < self.assignment.num_stages:
            raise ValueError(f"abort origin {origin} is not a stage of this group")
        summary = message.get("complaint")
        if summary is not None and not (isinstance(summary, dict) and len(summary) <= 8):
            raise ValueError("an abort's complaint is a small object")
        failure = SequenceFailed(str(message.get("reason")), summary=summary)
        seq = self.sequences.get(job)
        if seq is None:
            self._forward_abort(job, failure, origin)  # the job never got here; later stages may know it
        elif seq.status != FAILED:
            self._fail(seq, failure, origin=origin)

    def _sequence(self, message: dict) -> SequenceState | None:
        seq = self.sequences.get(message["job"])
        return seq if seq is not None and seq.active else None

    def _guard(self, seq: SequenceState, function, *args) -> None:
        try:
            function(*args)
        except SequenceFailed as failure:
            self._fail(seq, failure)

    # ------------------------------------------------------------------------------------------ failures

    def _fail(self, seq: SequenceState, failure: SequenceFailed, origin: int | None = None) -> None:
        """Fail one sequence here and send `abort` on round the ring until it is back at its origin."""
        a = self.assignment
        origin = a.stage_index if origin is None else origin
        fail(seq, failure.reason)
        seq.complaint = seq.complaint or failure.summary
        if seq.job_id_hex not in self._stepping:
            seq.cache = None
        self._ready.pop(seq.job_id_hex, None)
        log.warning("job %s failed at stage %d: %s", seq.job_id_hex[:12], a.stage_index, failure.reason)
        if failure.complaint is not None and origin == a.stage_index and self.on_complaint is not None:
            self._call_hook(self.on_complaint, failure.complaint)
        handle = self.handles.get(seq.job_id_hex)
        if handle is not None and not handle.finished.is_set():
            handle.error, handle.complaint = failure.reason, failure.summary
            handle._push({"error": {"code": "job_failed", "message": failure.reason}, "complaint": failure.summary})
            handle.finished.set()
        self._forward_abort(seq.job_id_hex, failure, origin)
        self._remember(seq.job_id_hex)

    def _forward_abort(self, job: str, failure: SequenceFailed, origin: int) -> None:
        a = self.assignment
        if a.num_stages > 1 and a.next_index != origin:
            self._send_text(encode_message(
                "abort", job=job, reason=failure.reason, origin=origin,
                complaint=failure.summary,
            ))

    def _fail_all(self, reason: str) -> None:
        for seq in self._live():
            if seq.active:
                self._fail(seq, SequenceFailed(reason))

    def _on_outbound_lost(self, reason: str) -> None:
        self._inbox.append("lost", reason)
        self._wake.set()

    async def _watch_stalls(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.stall_timeout_s / 4))
            now = time.monotonic()
            for seq in self._live():
                if seq.active and now - seq.last_progress > self.stall_timeout_s:
                    self._fail(seq, SequenceFailed(f"stalled: no progress for {now - seq.last_progress:.1f} s at stage {self.assignment.stage_index}"))

    # ------------------------------------------------------------------------------------------ results

    def _publish(self, result: StageResult) -> None:
        self.results[result.job_id] = result.without_rows()
        self._remember(result.job_id)
        if self.on_result is not None:
            self._call_hook(self.on_result, result)

    def _call_hook(self, hook, value) -> None:
        try:
            outcome = hook(value)
            if asyncio.iscoroutine(outcome):
                asyncio.get_running_loop().create_task(outcome)
        except Exception:
            log.exception("result/complaint hook failed")

    def _remember(self, job: str) -> None:
        self._finished_order.append(job)
        while len(self._finished_order) > self.keep_finished:
            old = self._finished_order.popleft()
            seq = self.sequences.get(old)
            if seq is not None and not seq.active:
                self.sequences.pop(old, None)
                self.results.pop(old, None)
                self.handles.pop(old, None)

    def result(self, job_id: str) -> StageResult | None:
        return self.results.get(job_id.lower())

    def job_status(self, job_id: str) -> dict[str, Any]:
        seq = self.sequences.get(job_id.lower())
        if seq is None:
            raise PipelineError(404, "unknown_job", f"job {job_id} is not known to this stage")
        status = {"job_id": seq.job_id_hex, "stage_index": self.assignment.stage_index if self.assignment else None,
                  "status": seq.status, "output_token_ids": list(seq.output), "finish_reason": seq.finish_reason,
                  "error": seq.error, "complaint": seq.complaint}
        handle = self.handles.get(seq.job_id_hex)
        if handle is not None:
            status["output_token_ids"] = list(handle.output)
            status["closed"] = handle.finished.is_set() and handle.error is None
        return status

    def stats(self) -> dict[str, Any]:
        engine = self.engine
        s = engine.stats if engine else None
        model = engine.model if engine else None
        return {
            "address": self.key.address,
            "stage_index": self.assignment.stage_index if self.assignment else None,
            "in_flight": self.in_flight(),
            "steps": s.steps if s else 0, "rows": s.rows if s else 0,
            "compute_s": s.compute_s if s else 0.0, "sample_s": s.sample_s if s else 0.0,
            "proof_s": s.proof_s if s else 0.0, "check_s": s.check_s if s else 0.0,
            "bytes_sent": self._outbound.bytes_sent if self._outbound else 0,
            "frames_sent": self._outbound.frames_sent if self._outbound else 0,
            "bytes_received": self.bytes_received, "frames_received": self.frames_received,
            "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()) if model else 0,
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "pid": os.getpid(),
        }

    # ------------------------------------------------------------------------------------------ sending

    def _send_bytes(self, data: bytes) -> None:
        if self._outbound is not None and not self._outbound.send(data):
            log.debug("dropped a frame: the link to stage %d is down", self.assignment.next_index)

    def _send_claim(self, claim, signature: bytes) -> None:
        self._send_text(encode_message(
            "proof", job="0x" + claim.job_id.hex(), chunk=claim.chunk_index, proof="0x" + claim.proof.hex(),
            digest="0x" + claim.rows_digest.hex(), signature="0x" + signature.hex(),
        ))

    def _send_text(self, text: str) -> None:
        if self.assignment is None or self.assignment.num_stages == 1:
            return
        if self._outbound is not None:
            self._outbound.send(text)

    def _require_assignment(self) -> Assignment:
        if self.assignment is None or self.engine is None:
            raise PipelineError(409, "not_assigned", "this stage server has no assignment yet")
        return self.assignment

    # ------------------------------------------------------------------------------------------ HTTP

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

    async def _http_health(self, request: web.Request) -> web.Response:
        a = self.assignment
        return web.json_response({
            "status": "ok", "address": self.key.address, "url": self.url,
            "assignment": a.to_dict() if a else None, "in_flight": self.in_flight(),
            "link_up": self.link_up if a and a.num_stages > 1 else None,
        })

    async def _http_get_assignment(self, request: web.Request) -> web.Response:
        return web.json_response({"assignment": self.assignment.to_dict() if self.assignment else None})

    async def _refused(self, request: web.Request) -> web.Response | None:
        """None when the request is signed by an orchestrator we trust; the JSON error (401/403) otherwise."""
        try:
            self.control.check(request.method, request.path, request.headers, await request.read())
        except ControlRefused as refused:
            log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, refused.message)
            return _error(refused.status, refused.code, refused.message)
        return None

    async def _http_put_assignment(self, request: web.Request) -> web.Response:
        if (refused := await self._refused(request)) is not None:
            return refused
        try:
            assignment = Assignment.from_dict(await _json_body(request))
            await self.assign(assignment)
        except AssignmentError as error:
            return _error(422, "bad_assignment", str(error))
        except PipelineError as error:
            return _error(error.status, error.code, error.message)
        except (ValueError, OSError) as error:  # the model directory cannot serve these layers
            log.warning("assignment refused: %s", error)
            return _error(422, "bad_model", f"{type(error).__name__}: {error}")
        return web.json_response({"status": "ready", "assignment": assignment.to_dict()})

    async def _http_delete_assignment(self, request: web.Request) -> web.Response:
        if (refused := await self._refused(request)) is not None:
            return refused
        await self.release()
        return web.json_response({"status": "released"})

    async def _http_post_job(self, request: web.Request) -> web.Response:
        if (refused := await self._refused(request)) is not None:
            return refused
        try:
            body = await _json_body(request)
            spec = JobSpec.from_dict(body.get("spec") if isinstance(body, dict) else None)
            handle = self.submit(spec)
        except (JobSpecError, AssignmentError) as error:
            return _error(400, "bad_spec", str(error))
        except PipelineError as error:
            return _error(error.status, error.code, error.message)
        return web.json_response({"job_id": handle.job_id}, status=202)

    async def _http_get_job(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self.job_status(request.match_info["job_id"]))
        except PipelineError as error:
            return _error(error.status, error.code, error.message)

    async def _http_stream_job(self, request: web.Request) -> web.StreamResponse:
        handle = self.handles.get(request.match_info["job_id"].lower())
        if handle is None:
            return _error(404, "unknown_job", "no job with that id was submitted to this stage")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        async for event in handle.events():
            await response.write((json.dumps(event) + "\n").encode())
        await response.write_eof()
        return response

    async def _http_stage_result(self, request: web.Request) -> web.Response:
        job = request.match_info["job_id"].lower()
        result = self.results.get(job)
        if result is not None:
            return web.json_response(result.to_json())
        seq = self.sequences.get(job)
        if seq is None:
            return _error(404, "unknown_job", f"job {job} is not known to this stage")
        if seq.status == FAILED:
            return _error(409, "job_failed", seq.error or "failed")
        return _error(409, "job_running", f"job {job} is still running at this stage")

    async def _http_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


async def _json_body(request: web.Request) -> Any:
    try:
        return json_input.loads(await request.read())
    except json_input.JsonInputError as error:
        raise AssignmentError(f"the request body is not JSON: {error}") from None


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
