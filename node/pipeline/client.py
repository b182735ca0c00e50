"""A small HTTP client for stage servers: what the orchestrator, the local pipeline and the CLI call.

Every method maps to one route of server.py and raises `StageClientError` (status, code, message) for a
JSON error, or for a server that cannot be reached. The control calls (`assign`, `release`, `submit`) are
signed with `controller`, the orchestrator key the server trusts (control.py), for the server's worker
address (`worker`, else read once from its GET /health).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from ledger import json_input
from ledger.errors import StagewiseError
from node.pipeline.assignment import Assignment
from node.pipeline.control import sign_control
from node.pipeline.sequence import StageResult
from node.protocol.job import JobSpec
from node.protocol.signing import SigningKey


class StageClientError(StagewiseError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}" if status == 0 else f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class StageClient:
    def __init__(
        self, url: str, session: aiohttp.ClientSession, *, controller: SigningKey | None = None, worker: str | None = None
    ):
        self.url = url.rstrip("/")
        self.session = session
        self.controller = controller
        self.worker = worker

    async def _call(
        self, method: str, path: str, body: Any = None, timeout_s: float = 600.0, *, signed: bool = False
    ) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if signed:
            if self.controller is None:
                raise StageClientError(0, "no_controller", f"{method} {path} needs the orchestrator key (controller=)")
            if self.worker is None:
                self.worker = (await self.health())["address"]
            headers.update(sign_control(self.controller, self.worker, method, path, data))
        try:
            async with self.session.request(
                method, self.url + path, data=data or None, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                try:
                    data = await json_input.read_json(response)
                except json_input.JsonInputError as error:
                    raise StageClientError(response.status, "bad_answer", f"{self.url}{path} answered {error}") from None
                if response.status >= 400:
                    error = (data or {}).get("error", {}) if isinstance(data, dict) else {}
                    raise StageClientError(response.status, error.get("code", "error"), error.get("message", str(data)))
                return data
        except (aiohttp.ClientError, TimeoutError) as error:
            raise StageClientError(0, "unreachable", f"{self.url}: {type(error).__name__}: {error}") from None

    async def health(self) -> dict:
        return await self._call("GET", "/health", timeout_s=10)

    async def assign(self, assignment: Assignment) -> dict:
        """PUT /v1/assignment: returns once the layers are loaded (may take a while for big models)."""
        return await self._call("PUT", "/v1/assignment", assignment.to_dict(), signed=True)

    async def release(self) -> dict:
        return await self._call("DELETE", "/v1/assignment", signed=True)

    async def submit(self, spec: JobSpec) -> str:
        return (await self._call("POST", "/v1/jobs", {"spec": spec.to_dict()}, signed=True))["job_id"]

    async def status(self, job_id: str) -> dict:
        return await self._call("GET", f"/v1/jobs/{job_id}")

    async def stage_result(self, job_id: str) -> StageResult:
        return StageResult.from_json(await self._call("GET", f"/v1/jobs/{job_id}/stage-result"))

    async def stats(self) -> dict:
        return await self._call("GET", "/v1/stats")

    async def stream(self, job_id: str) -> AsyncIterator[dict]:
        """Events of a job at stage 0: {"tokens": [...]}, then {"done": ...} or {"error": ...}."""
        try:
            async with self.session.get(f"{self.url}/v1/jobs/{job_id}/stream", timeout=aiohttp.ClientTimeout(total=None)) as response:
                if response.status >= 400:
                    data = await json_input.read_json(response)
                    error = data.get("error", {}) if isinstance(data, dict) else {}
                    raise StageClientError(response.status, error.get("code", "error"), error.get("message", ""))
                async for event in json_input.read_json_lines(response):
                    yield event
        except aiohttp.ClientError as error:
            raise StageClientError(0, "unreachable", f"{self.url}: {error}") from None
        except json_input.JsonInputError as error:
            raise StageClientError(0, "bad_answer", f"{self.url}: the job stream: {error}") from None
