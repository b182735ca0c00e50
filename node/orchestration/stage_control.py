"""The orchestrator's hands on real stage servers (node/pipeline/server.py), over their HTTP API.

    prepare  PUT    {stage}/v1/assignment          every stage of the group, then wait for the links
    run      POST   {stage 0}/v1/jobs              then stream GET {stage 0}/v1/jobs/{id}/stream (ndjson)
    release  DELETE {stage}/v1/assignment          only workers whose latest assignment is that group

Every control request (PUT, DELETE, POST) is signed with the validator's key (`key`), which the workers
trust because their validator's GET /health names its address (node/pipeline/control.py).

A failed job is diagnosed before it is reported: a stage that does not answer GET /health is the one that
dropped out (`StageFailure`, so the orchestrator reroutes); a stage that answers serving a newer group was
moved there by the orchestrator itself (also while that group is still being prepared: its new stage may take
minutes to load), so it is not to blame; anything else, a handoff complaint included (its evidence goes to the
verdict, which may blame the complainer), is a `JobInterrupted` (continued on the group's successor, nobody
dropped).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from ledger import json_input
from node.orchestration.grouping import Group
from node.orchestration.pipeline_driver import JobInterrupted, StageFailure, TokenSink
from node.orchestration.registry import WorkerRecord
from node.pipeline.control import sign_control
from node.protocol.job import JobSpec
from node.protocol.signing import SigningKey

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 4096
"""Requests to stage servers in flight at once. A job holds one (stage 0's token stream) for its whole run, and a
validator runs two sequences per stage of every group: aiohttp's default of 100 left a network of 300 groups
waiting on its own connection pool (bench/scale.py's dispatch row: 27 jobs/s). Each is a file descriptor."""


class HttpPipelineDriver:
    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        key: SigningKey,
        model_id: str | None = None,
        load_timeout_s: float = 600.0,
        link_timeout_s: float = 30.0,
        health_timeout_s: float = 3.0,
        job_timeout_s: float = 3600.0,
        precision: str = "fp32",
        wire_dtype: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """`precision`: what the model's jobs declare (PROTOCOL I8); every stage computes in it and, unless
        `wire_dtype` says otherwise, hands its activations over in it."""
        if model_id is None:
            # torch: imported where used, to keep it out of start-up
            from node.pipeline.weights import model_id as model_id_of

            model_id = model_id_of(model_dir)
        self.model_id = model_id
        self.key = key
        self.load_timeout_s = load_timeout_s
        self.link_timeout_s = link_timeout_s
        self.health_timeout_s = health_timeout_s
        self.job_timeout_s = job_timeout_s
        self.precision = precision
        self.wire_dtype = precision if wire_dtype is None else wire_dtype
        self._urls: dict[str, tuple[str, ...]] = {}  # group id -> stage server URLs
        self._assigned: dict[str, str] = {}  # worker -> group id it was last assigned
        # worker -> the group ids last sent to it (PUT started): a stage that serves one of them was moved by us,
        # even while its new group is still being prepared (its other stages loading their layers)
        self._offered: dict[str, deque[str]] = {}
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.max_connections))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _signed(self, worker: str, method: str, path: str, body: object = None) -> dict:
        """aiohttp request arguments: the exact body bytes and the headers that sign them for `worker`."""
        data = b"" if body is None else json.dumps(body).encode()
        headers = sign_control(self.key, worker, method, path, data)
        if body is not None:
            headers["Content-Type"] = "application/json"
        return {"data": data or None, "headers": headers}

    # ----------------------------------------------------------------- prepare / release

    async def prepare(self, group: Group, workers: Mapping[str, WorkerRecord]) -> None:
        urls = []
        for stage in group.stages:
            record = workers.get(stage.worker)
            if record is None:
                raise StageFailure(stage.worker, "not registered")
            urls.append(record.stage_url)
        peers = [
            {"worker": s.worker, "url": url, "layer_start": s.layer_start, "layer_end": s.layer_end}
            for s, url in zip(group.stages, urls)
        ]
        for stage in group.stages:
            self._offered.setdefault(stage.worker, deque(maxlen=4)).append(group.group_id)
        # every stage loads its layers at the same time
        await asyncio.gather(*(self._assign(group, index, url, peers) for index, url in enumerate(urls)))
        self._urls[group.group_id] = tuple(urls)
        for stage in group.stages:
            self._assigned[stage.worker] = group.group_id
        if len(urls) > 1:
            await asyncio.gather(*(self._wait_linked(stage.worker, url) for stage, url in zip(group.stages, urls)))

    async def _assign(self, group: Group, index: int, url: str, peers: list[dict]) -> None:
        body = {
            "group_id": group.group_id,
            "model_id": self.model_id,
            "stage_index": index,
            "stages": peers,
            "wire_dtype": self.wire_dtype,
            # named only when not fp32: a stage server from before declared precisions still takes fp32 groups
            **({"precision": self.precision} if self.precision != "fp32" else {}),
        }
        worker = group.stages[index].worker
        try:
            async with self._http().put(
                url + "/v1/assignment", **self._signed(worker, "PUT", "/v1/assignment", body), timeout=aiohttp.ClientTimeout(total=self.load_timeout_s)
            ) as response:
                if response.status != 200:
                    raise StageFailure(worker, f"refused its assignment: HTTP {response.status}: {await _error_text(response)}")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise StageFailure(worker, f"unreachable at {url}: {error or type(error).__name__}") from None

    async def _wait_linked(self, worker: str, url: str) -> None:
        deadline = asyncio.get_running_loop().time() + self.link_timeout_s
        while True:
            health = await self._health(url)
            if health is None:
                raise StageFailure(worker, f"unreachable at {url} while linking")
            if health.get("link_up") in (True, None):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise StageFailure(worker, f"could not link to its next stage within {self.link_timeout_s:.0f} s")
            await asyncio.sleep(0.05)

    async def release(self, group: Group) -> None:
        urls = self._urls.pop(group.group_id, ())
        for stage, url in zip(group.stages, urls):
            if self._assigned.get(stage.worker) != group.group_id:
                continue  # it serves a newer group now (a repaired one): leave it be
            self._assigned.pop(stage.worker, None)
            try:
                async with self._http().delete(
                    url + "/v1/assignment", **self._signed(stage.worker, "DELETE", "/v1/assignment"), timeout=aiohttp.ClientTimeout(total=self.health_timeout_s)
                ):
                    pass
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass  # gone already: nothing to release

    # ----------------------------------------------------------------- run

    async def run(self, group: Group, spec: JobSpec, on_tokens: TokenSink) -> tuple[int, ...]:
        urls = self._urls.get(group.group_id)
        if urls is None:
            raise JobInterrupted(f"group {group.group_id} is not prepared")
        first = urls[0]
        await self._submit(group, first, spec)
        output: list[int] = []
        try:
            async with self._http().get(
                f"{first}/v1/jobs/{spec.job_id_hex}/stream",
                timeout=aiohttp.ClientTimeout(total=self.job_timeout_s, sock_read=None),
            ) as response:
                if response.status != 200:
                    raise await self._diagnose(group, f"stream refused: HTTP {response.status}: {await _error_text(response)}")
                async for event in json_input.read_json_lines(response):
                    if "tokens" in event:
                        new = [int(t) for t in event["tokens"]]
                        if len(output) + len(new) > spec.sampling.max_new_tokens:
                            raise StageFailure(group.stages[0].worker, f"stage 0 streamed more tokens than the job's "
                                               f"max_new_tokens ({spec.sampling.max_new_tokens})")
                        output.extend(new)
                        on_tokens(new)
                    elif event.get("done"):
                        return tuple(int(t) for t in event["output_token_ids"])
                    elif "error" in event:
                        raise await self._diagnose(group, event["error"].get("message", "failed"), event.get("complaint"))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            raise await self._diagnose(group, f"stage 0 stream lost: {error or type(error).__name__}") from None
        except (ValueError, TypeError, KeyError, AttributeError) as error:  # JsonInputError is a ValueError
            raise await self._diagnose(group, f"stage 0 sent a malformed event: {error}") from None
        raise await self._diagnose(group, "the stream ended before the job did")

    async def _submit(self, group: Group, url: str, spec: JobSpec) -> None:
        deadline = asyncio.get_running_loop().time() + self.link_timeout_s
        while True:
            try:
                signed = self._signed(group.stages[0].worker, "POST", "/v1/jobs", {"spec": spec.to_dict()})
                async with self._http().post(
                    url + "/v1/jobs", **signed, timeout=aiohttp.ClientTimeout(total=self.link_timeout_s)
                ) as response:
                    if response.status == 202:
                        return
                    text = await _error_text(response)
                    code = _error_code(text)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
                raise StageFailure(group.stages[0].worker, f"unreachable at {url}: {error or type(error).__name__}") from None
            if code == "link_down" and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)  # stage 1 is (re)connecting
                continue
            raise await self._diagnose(group, f"stage 0 refused the job: HTTP {response.status}: {text}")

    async def _diagnose(self, group: Group, reason: str, complaint: dict | None = None) -> Exception:
        """Who is to blame for a failed job: the first stage that is gone, or nobody. A handoff complaint names
        nobody here: a false one would otherwise evict an honest sender (its verdict decides, PROTOCOL I2)."""
        urls = self._urls.get(group.group_id, ())
        healths = await asyncio.gather(*(self._health(url) for url in urls))
        for stage, health in zip(group.stages, healths):
            if health is None:
                return StageFailure(stage.worker, f"{reason} (its stage server does not answer)")
        for stage, health in zip(group.stages, healths):
            serving = (health.get("assignment") or {}).get("group_id")
            moved_by_us = serving == self._assigned.get(stage.worker) or serving in self._offered.get(stage.worker, ())
            if serving != group.group_id and not moved_by_us:
                return StageFailure(stage.worker, f"{reason} (it lost its assignment: restarted?)")
        if any((health.get("assignment") or {}).get("group_id") != group.group_id for health in healths):
            # the orchestrator moved a stage to a newer group (a repair): nobody's fault, continue there
            return JobInterrupted(f"{reason} (group {group.group_id} was regrouped)")
        if complaint:  # its evidence goes to the verdict, which may blame either side: drop nobody on its word
            return JobInterrupted(f"handoff complaint by stage {complaint.get('complainer_stage')}: {reason}")
        return JobInterrupted(reason)

    async def _health(self, url: str) -> dict | None:
        return await stage_health(self._http(), url, self.health_timeout_s)


async def stage_health(session: aiohttp.ClientSession, url: str, timeout_s: float) -> dict | None:
    """A stage server's GET /health, or None when it does not answer 200 with a JSON object in time."""
    try:
        async with session.get(url.rstrip("/") + "/health", timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                return None
            health = await json_input.read_json(response, max_bytes=1 << 20)  # an assignment of 256 stages fits
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
        return None
    return health if isinstance(health, dict) else None


async def _error_text(response: aiohttp.ClientResponse) -> str:
    try:
        return (await response.content.read(500)).decode("utf-8", "replace")
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return ""


def _error_code(text: str) -> str | None:
    try:
        return json_input.loads(text)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
