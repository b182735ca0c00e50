"""How a job ends at a stage server: a failure fails the sequence here and travels the ring as `abort`
(the complaint, when there is one, goes to the `on_complaint` hook); a closed job's `StageResult` goes to the
`on_result` hook and is kept for `GET /v1/jobs/{job_id}/stage-result`; the oldest finished jobs are forgotten.

`JobOutcomes` is a part of `StageServer` (server.py), whose `__init__` sets the state these methods use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from node.pipeline.engine import fail
from node.pipeline.job_handle import PipelineError
from node.pipeline.sequence import SequenceFailed, SequenceState, StageResult
from node.pipeline.wire import encode_message

log = logging.getLogger("stagewise.pipeline")


class JobOutcomes:
    """StageServer's failures and results (mixed into server.StageServer)."""

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
