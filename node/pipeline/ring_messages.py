"""The messages a stage server exchanges round the ring besides the hidden-state frames: `job`, `proof`,
`tokens` (signed by the last stage), `end`, `closed` and `abort`, how each is applied here, and how they are sent
to the next stage.

`RingMessages` is a part of `StageServer` (server.py), whose `__init__` sets the state these methods use.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from node.pipeline.assignment import AssignmentError
from node.pipeline.engine import StepInput
from node.pipeline.sequence import DONE, FAILED, SequenceFailed, SequenceState
from node.pipeline.wire import FrameError, encode_message, hex_bytes
from node.protocol.handoff import tokens_message
from node.protocol.job import JobSpec, JobSpecError
from node.protocol.signing import SignatureError, recover_message

log = logging.getLogger("stagewise.pipeline")


class RingMessages:
    """StageServer's control messages round the ring (mixed into server.StageServer)."""

    # ------------------------------------------------------------------------------------------ receiving

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

