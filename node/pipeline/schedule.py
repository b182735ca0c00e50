"""A stage server's schedule: jobs enter at stage 0 (`submit`), and every stage runs what has arrived in
micro-batches on its compute thread, then sends the rows, proofs and tokens on.

Stage 0 runs the sequences whose next token has arrived in micro-batches of about in-flight / S sequences,
holding one back (about one ring cycle) when too many circulate, so the two run together; the other stages
batch whatever has arrived. `MicroBatchSchedule` is a part of `StageServer` (server.py), whose `__init__` sets
the state these methods use.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable

import torch

from node.pipeline.assignment import AssignmentError
from node.pipeline.engine import StepInput, finish_reason
from node.pipeline.job_handle import JobHandle, PipelineError
from node.pipeline.sequence import SAMPLED, SequenceFailed
from node.pipeline.wire import FrameError, decode_frame, decode_message, encode_frame, encode_message, frame_job_ids
from node.protocol.handoff import tokens_message
from node.protocol.job import JobSpec

log = logging.getLogger("stagewise.pipeline")


class MicroBatchSchedule:
    """StageServer's jobs at stage 0 and its schedule (mixed into server.StageServer)."""

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

