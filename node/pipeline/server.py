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

This module builds the server (its state, its aiohttp app and routes, start and stop); the rest of
`StageServer` lives beside it: ring_place.py (assignment and links), schedule.py (stage 0's jobs and the
micro-batch schedule), ring_messages.py (the control messages round the ring), job_outcomes.py (failures
and results); job_handle.py holds `JobHandle` and `PipelineError`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import resource
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from aiohttp import web

from ledger import json_input
from node.http.limits import HttpGuard, HttpLimits
from node.pipeline.assignment import Assignment, AssignmentError
from node.pipeline.control import ControlGuard, ControlRefused
from node.pipeline.engine import StageEngine, StepInput, Tamper
from node.pipeline.inbox import DEFAULT_MAX_BYTES as DEFAULT_MAX_INBOX_BYTES
from node.pipeline.inbox import Inbox
from node.pipeline.job_handle import JobHandle, PipelineError
from node.pipeline.job_outcomes import JobOutcomes
from node.pipeline.link import CHALLENGE_PATH, LINK_PATH, MAX_QUEUED_BYTES, Challenges, OutboundLink
from node.pipeline.model import StageModel
from node.pipeline.ring_messages import RingMessages
from node.pipeline.ring_place import RingPlace
from node.pipeline.schedule import MicroBatchSchedule
from node.pipeline.sequence import FAILED, SequenceFailed, SequenceState, StageResult
from node.pipeline.started_jobs import StartedJobs
from node.protocol.complaints import Complaint
from node.protocol.job import JobSpec, JobSpecError
from node.protocol.signing import SigningKey

log = logging.getLogger("stagewise.pipeline")

ResultHook = Callable[[StageResult], Any]
ComplaintHook = Callable[[Complaint], Any]


class StageServer(RingPlace, MicroBatchSchedule, RingMessages, JobOutcomes):
    """One stage of one group over aiohttp; the parts it is built from are named in the module's docstring."""

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
        dtype: torch.dtype | None = None,
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
        methods `assign`, `release` and `submit` are the host process's own and need no signature.
        `dtype`: None computes in the precision each assignment declares (PROTOCOL I8); a dtype computes in it
        whatever the assignment declares (a cheat the tests use: the validator's replay must blame it)."""
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
        self._loaded: tuple[str, int, int, torch.dtype] | None = None  # model id, layers, dtype
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


    # ------------------------------------------------------------------------------------------ HTTP

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
