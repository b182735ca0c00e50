"""The worker's side of the validator's HTTP API (`ValidatorClient`): health, registration, heartbeats, the
groups' stage URLs, and bundle submission with retries."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from ledger import json_input
from node.protocol.bundle import Bundle
from node.worker.errors import WorkerError, short_error

log = logging.getLogger("stagewise.worker")


class ValidatorUnreachable(WorkerError):
    """No answer from the validator (connection refused, timeout, not HTTP)."""


class ValidatorRefused(WorkerError):
    """The validator answered with a JSON error."""

    def __init__(self, status: int, code: str, message: str, payload: Any = None) -> None:
        super().__init__(f"the validator refused ({status} {code}): {message}")
        self.status = status
        self.code = code
        self.message = message
        self.payload = payload


class ValidatorClient:
    """The worker's side of the validator's HTTP API (routes in INTERFACES.md).

    `base_url` may name several validator processes that share one ledger, comma-separated: one of them
    orchestrates at a time (node/orchestration/leadership.py), so a request that finds its process down or
    standing by (503 `not_orchestrating`) goes to the next, which is then kept."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession, timeout_s: float = 10.0) -> None:
        self.base_urls = [url.strip().rstrip("/") for url in base_url.split(",") if url.strip()]
        if not self.base_urls:
            raise WorkerError("no validator URL given")
        self._current = 0
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    @property
    def base_url(self) -> str:
        return self.base_urls[self._current]

    async def request(
        self, method: str, path: str, body: Any = None, *, data: bytes | None = None, timeout_s: float | None = None
    ) -> Any:
        for tried in range(len(self.base_urls)):
            try:
                return await self._request_one(method, path, body, data=data, timeout_s=timeout_s)
            except (ValidatorUnreachable, ValidatorRefused) as problem:
                moved_on = isinstance(problem, ValidatorUnreachable) or problem.code == "not_orchestrating"
                if not moved_on or tried == len(self.base_urls) - 1:
                    raise
                self._current = (self._current + 1) % len(self.base_urls)
                log.warning("%s; trying the validator at %s", problem, self.base_url)
        raise AssertionError("unreachable")

    async def _request_one(
        self, method: str, path: str, body: Any = None, *, data: bytes | None = None, timeout_s: float | None = None
    ) -> Any:
        url = self.base_url + path
        timeout = self.timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s)
        kwargs: dict[str, Any] = {"timeout": timeout}
        if data is not None:
            kwargs["data"] = data
            kwargs["headers"] = {"Content-Type": "application/json"}
        elif body is not None:
            kwargs["json"] = body
        try:
            async with self.session.request(method, url, **kwargs) as response:
                raw = await json_input.read_bytes(response.content)
                status = response.status
        except asyncio.TimeoutError:
            raise ValidatorUnreachable(
                f"the validator at {self.base_url} did not answer {method} {path} within {timeout.total:.0f}s"
            ) from None
        except (aiohttp.ClientError, OSError) as error:
            raise ValidatorUnreachable(f"cannot reach the validator at {self.base_url}: {short_error(error)}") from None
        except json_input.JsonInputError as error:
            raise ValidatorUnreachable(f"{url} answered {error}; is {self.base_url} a stagewise validator?") from None
        try:
            payload = json_input.loads(raw) if raw else None
        except ValueError:
            payload = None
        if status >= 400:
            error = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(error, dict):
                raise ValidatorRefused(status, str(error.get("code", "error")), str(error.get("message", "")), payload)
            raise ValidatorRefused(status, "http_error", raw[:200].decode("utf-8", "replace"), payload)
        if payload is None and raw:
            raise ValidatorUnreachable(f"{url} did not answer JSON; is {self.base_url} a stagewise validator?")
        return payload

    async def health(self) -> dict[str, Any]:
        try:
            payload = await self.request("GET", "/health")
        except ValidatorRefused as refused:
            if refused.status == 503 and isinstance(refused.payload, dict):  # degraded still says where its chain is
                log.warning("the validator reports itself degraded: %s", refused.payload.get("ledger_error", "no reason given"))
                return refused.payload
            raise
        return payload if isinstance(payload, dict) else {}

    async def register(self, signed: Any, timeout_s: float = 600.0) -> Any:
        """Registering may take long: the orchestrator prepares a new group (every stage loads its layers)
        before it answers."""
        return await self.request("POST", "/v1/workers/register", signed.to_json(), timeout_s=timeout_s)

    async def heartbeat(self, signed: Any) -> Any:
        return await self.request("POST", "/v1/workers/heartbeat", signed.to_json())

    async def leave(self, signed: Any, timeout_s: float = 10.0) -> Any:
        """Shutting down: the orchestrator repairs our group now (a spare takes our stage)."""
        return await self.request("POST", "/v1/workers/leave", signed.to_json(), timeout_s=timeout_s)

    async def assignment(self, address: str) -> dict[str, Any]:
        return await self.request("GET", f"/v1/workers/{address}/assignment")

    async def stage_urls(self) -> dict[str, str]:
        """Worker address -> stage server URL, from GET /v1/groups."""
        payload = await self.request("GET", "/v1/groups")
        workers = payload.get("workers", []) if isinstance(payload, dict) else []
        return {w["address"]: w["stage_url"] for w in workers if isinstance(w, dict) and "stage_url" in w}

    async def submit_bundle(
        self, bundle: Bundle, attempts: int = 8, first_delay_s: float = 0.5, max_delay_s: float = 30.0
    ) -> dict[str, Any]:
        """POST the bundle until the validator has it. Retries only what a retry can fix (unreachable, 5xx,
        429); a 409 (already recorded) counts as delivered; other refusals are final."""
        body = bundle.to_json().encode()
        delay = first_delay_s
        for attempt in range(1, attempts + 1):
            try:
                result = await self.request("POST", "/v1/bundles", data=body)
                return result if isinstance(result, dict) else {}
            except ValidatorRefused as refused:
                if refused.status == 409 and refused.code == "duplicate_bundle":
                    return {"job_id": bundle.job_id_hex, "status": "duplicate"}
                if refused.status < 500 and refused.status != 429:
                    raise
                problem: WorkerError = refused
            except ValidatorUnreachable as unreachable:
                problem = unreachable
            if attempt == attempts:
                raise WorkerError(f"bundle {bundle.job_id_hex} not delivered after {attempts} attempts: {problem}")
            log.warning("bundle %s: attempt %d/%d failed (%s); retrying in %.1fs", bundle.job_id_hex, attempt, attempts, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)
        raise AssertionError("unreachable")
