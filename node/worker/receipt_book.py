"""The worker's receipts: `ReceiptBook` signs one per job its stage computed and keeps it (in memory and on
disk), with the rows the stage received (its defence, PROTOCOL I2); `receipt_routes` serves both to the other
stages and the validator."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from node.protocol.bundle import SignedStage, parse_stage
from node.protocol.handoff import INPUTS_ROUTE, ReceivedHandoff
from node.protocol.job import JobSpec
from node.protocol.receipts import ReceiptDomain, expected_receipt, sign_receipt
from node.protocol.signing import SigningKey
from node.worker.errors import WorkerError

RECEIPT_ROUTE = "/v1/jobs/{job_id}/receipt"


@dataclass(frozen=True)
class SignedJob:
    """A receipt this worker signed, with what it needs to assemble the bundle if it is the last stage."""

    spec: JobSpec
    stage: SignedStage
    output_token_ids: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.spec.job_id_hex,
            "spec": self.spec.to_dict(),
            "stage": self.stage.to_json(),
            "output_token_ids": list(self.output_token_ids),
        }


class ReceiptBook:
    """Signs this worker's receipts and keeps them by job id: the latest `keep_in_memory` in memory, and
    all of them on disk when given a folder (files older than `keep_days` are removed on start).

    It also keeps the rows the stage received for each job, with the claims its predecessor signed over
    them: the stage's defence if the validator's replay blames it (PROTOCOL I2). On disk beside the receipt
    when given a folder (`{job}.inputs.json`), else the latest `keep_in_memory` jobs' in memory."""

    def __init__(
        self,
        key: SigningKey,
        domain: ReceiptDomain,
        directory: Path | None = None,
        *,
        keep_in_memory: int = 4096,
        keep_days: float = 14.0,
    ) -> None:
        self.key = key
        self.domain = domain
        self.directory = directory
        self.keep_in_memory = keep_in_memory
        self._jobs: dict[str, SignedJob] = {}  # insertion-ordered: the oldest go first
        self._inputs: dict[str, dict[str, Any]] = {}  # without a folder: the defences, the oldest first
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            cutoff = time.time() - keep_days * 86400
            for path in directory.glob("0x*.json"):
                if path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)

    def sign(
        self, spec: JobSpec, stage_index: int, output_token_ids: Sequence[int], proofs: Sequence[bytes],
        handoffs: Sequence[ReceivedHandoff] = (),
    ) -> SignedJob:
        """Sign the one receipt the spec, output, proofs and received handoffs imply, after checking this
        stage is ours. The handoff claims are kept with it (the bundle needs them if the previous stage's
        receipt names other proofs than it handed over)."""
        if not 0 <= stage_index < len(spec.stages):
            raise WorkerError(f"job {spec.job_id_hex}: no stage {stage_index} in a {len(spec.stages)}-stage job")
        if spec.stages[stage_index].worker != self.key.address:
            raise WorkerError(
                f"job {spec.job_id_hex}: stage {stage_index} is assigned to {spec.stages[stage_index].worker}, not to us"
            )
        received = tuple(replace(handoff, rows=b"") for handoff in handoffs)
        receipt = expected_receipt(spec, stage_index, output_token_ids, proofs,
                                   received_proofs=[handoff.claim.proof for handoff in received])
        signed = SignedJob(
            spec,
            SignedStage(receipt, sign_receipt(self.key, receipt, self.domain), tuple(proofs), received),
            tuple(output_token_ids),
        )
        if handoffs:  # the defence first: a receipt that is out never lacks the rows behind it
            defence = {"job_id": spec.job_id_hex, "stage_index": stage_index,
                       "handoffs": [handoff.to_json() for handoff in handoffs]}
            if self.directory is None:
                self._inputs[spec.job_id_hex] = defence
                while len(self._inputs) > self.keep_in_memory:
                    del self._inputs[next(iter(self._inputs))]
            self._write(f"{spec.job_id_hex}.inputs.json", defence)
        self._keep(spec.job_id_hex, signed)
        self._write(f"{spec.job_id_hex}.json", signed.to_json())
        return signed

    def inputs(self, job_id_hex: str) -> dict[str, Any] | None:
        """The rows this stage received for the job, as the validator asks for them (None if not kept)."""
        job_id_hex = job_id_hex.lower()
        if self.directory is None:
            return self._inputs.get(job_id_hex)
        path = self.directory / f"{job_id_hex}.inputs.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _write(self, name: str, document: dict[str, Any]) -> None:
        if self.directory is not None:
            path = self.directory / name
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(document))
            os.replace(tmp, path)

    def get(self, job_id_hex: str) -> SignedJob | None:
        job_id_hex = job_id_hex.lower()
        found = self._jobs.get(job_id_hex)
        if found is None and self.directory is not None:
            path = self.directory / f"{job_id_hex}.json"
            if path.exists():
                found = _parse_signed_job(json.loads(path.read_text()))
                self._keep(job_id_hex, found)
        return found

    def _keep(self, job_id_hex: str, signed: SignedJob) -> None:
        self._jobs[job_id_hex] = signed
        while len(self._jobs) > self.keep_in_memory:
            del self._jobs[next(iter(self._jobs))]

    def __len__(self) -> int:
        return len(self._jobs)


def _parse_signed_job(data: dict[str, Any]) -> SignedJob:
    spec = JobSpec.from_dict(data["spec"])
    return SignedJob(spec, parse_signed_stage(data["stage"]), tuple(data["output_token_ids"]))


def parse_signed_stage(data: Any) -> SignedStage:
    """A peer's stage entry (same shape as in a bundle); BundleError when malformed."""
    return parse_stage(data)


def receipt_routes(book: ReceiptBook) -> list[Any]:
    """The worker's own routes on its stage server: GET /v1/jobs/{job_id}/receipt, and /inputs (the rows its
    stage received, its defence when the validator's replay blames it)."""

    def job_id_of(request: web.Request) -> str | None:
        job_id = request.match_info["job_id"]
        return job_id if job_id.startswith("0x") and len(job_id) == 66 else None

    async def get_receipt(request: web.Request) -> web.Response:
        if (job_id := job_id_of(request)) is None:
            return _error(400, "bad_job_id", "a job id is 0x and 64 hex digits")
        signed = book.get(job_id)
        if signed is None:
            return _error(404, "unknown_job", f"no receipt for job {job_id} (yet)")
        return web.json_response(signed.to_json())

    async def get_inputs(request: web.Request) -> web.Response:
        if (job_id := job_id_of(request)) is None:
            return _error(400, "bad_job_id", "a job id is 0x and 64 hex digits")
        inputs = await asyncio.to_thread(book.inputs, job_id)
        if inputs is None:
            return _error(404, "unknown_job", f"no received rows kept for job {job_id}")
        return web.json_response(inputs)

    return [web.get(RECEIPT_ROUTE, get_receipt), web.get(INPUTS_ROUTE, get_inputs)]


def _error(status: int, code: str, message: str):
    return web.json_response({"error": {"code": code, "message": message}}, status=status)

