"""A whole pipeline on one machine: S stage servers on loopback, in this process or in child processes.

This is what `stagewise generate`, the tests and the bench run. It is the production path end to end (HTTP
assignment, signed WebSocket links, binary frames, proofs and their checks), with throwaway keys and an even
split of the layers. The pipeline is its own orchestrator: it holds a throwaway `controller` key, every
stage server trusts only that key, and the control calls (assign, release, submit) are signed with it. In `processes=True` mode each stage is its own Python process (node/cli/stage_process.py),
as on separate machines.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from node import settings
from node.pipeline.assignment import Assignment, PeerStage
from node.pipeline.client import StageClient, StageClientError
from node.pipeline.layer_split import split_layers
from node.pipeline.model import ModelConfig
from node.pipeline.sequence import StageResult
from node.pipeline.server import StageServer
from node.pipeline.weights import model_id as compute_model_id
from node.protocol.job import JobSpec, SamplingParams, StageAssignment
from node.protocol.signing import SigningKey

KEY_ENV = settings.STAGE_KEY.name  # the stage process reads its key here, not from `ps`


def balanced_bounds(config: ModelConfig, num_stages: int) -> tuple[tuple[int, int], ...]:
    """Stages of equal speed on one machine: every stage about the same work per token, the LM head counted
    on the last one (node/pipeline/layer_split.py), as the orchestrator splits them."""
    return split_layers(config.num_layers, [1.0] * num_stages, [config.num_layers] * num_stages,
                        last_extra=config.head_layers)


@dataclass
class _ChildStage:
    process: asyncio.subprocess.Process
    url: str


class LocalPipeline:
    """Usage: `async with LocalPipeline(model_dir, 3) as pipe: tokens = await pipe.generate(prompt_ids)`."""

    def __init__(
        self,
        model_dir: str | Path,
        num_stages: int = 3,
        *,
        processes: bool = False,
        wire_dtype: str | None = None,
        precision: str = "fp32",
        group_id: str = "local",
        layer_bounds: Sequence[tuple[int, int]] | None = None,
        server_options: dict[str, Any] | None = None,
        stage_options: dict[int, dict[str, Any]] | None = None,
        threads_per_stage: int | None = None,
    ):
        self.model_dir = Path(model_dir)
        self.num_stages = num_stages
        self.processes = processes
        self.precision = precision
        self.wire_dtype = precision if wire_dtype is None else wire_dtype  # handoffs in the declared precision
        self.group_id = group_id
        self.layer_bounds = list(layer_bounds) if layer_bounds else None
        self.server_options = dict(server_options or {})
        self.stage_options = dict(stage_options or {})
        self.threads_per_stage = threads_per_stage
        self.keys = [SigningKey.generate() for _ in range(num_stages)]
        self.controller = SigningKey.generate()
        self.servers: list[Any] = []  # StageServer objects (in-process mode)
        self.children: list[_ChildStage] = []
        self.urls: list[str] = []
        self.model_id = ""
        self.assignment: Assignment | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "LocalPipeline":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def clients(self) -> list[StageClient]:
        return [
            StageClient(url, self._session, controller=self.controller, worker=key.address)
            for key, url in zip(self.keys, self.urls)
        ]

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        config = ModelConfig.from_dir(self.model_dir)
        bounds = self.layer_bounds or balanced_bounds(config, self.num_stages)
        self.model_id = await asyncio.get_running_loop().run_in_executor(None, compute_model_id, self.model_dir)
        try:
            if self.processes:
                await self._start_children()
            else:
                await self._start_in_process()
            peers = tuple(PeerStage(k.address, url, a, b) for k, url, (a, b) in zip(self.keys, self.urls, bounds))
            self.assignment = Assignment(self.group_id, self.model_id, 0, peers, self.wire_dtype, self.precision)
            await asyncio.gather(*[
                client.assign(Assignment(self.group_id, self.model_id, index, peers, self.wire_dtype, self.precision))
                for index, client in enumerate(self.clients)
            ])
            await self.wait_linked()
        except BaseException:
            await self.stop()
            raise

    async def wait_linked(self, timeout_s: float = 30.0) -> None:
        """Until every stage's link to its successor is up."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            healths = await asyncio.gather(*[client.health() for client in self.clients])
            if all(h.get("link_up") in (True, None) for h in healths):
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"stage links not up after {timeout_s} s: {[h.get('link_up') for h in healths]}")
            await asyncio.sleep(0.02)

    async def _start_in_process(self) -> None:
        for index, key in enumerate(self.keys):
            options = {**self.server_options, **self.stage_options.get(index, {})}
            server = StageServer(key, model_dirs=[self.model_dir], controllers=[self.controller.address], **options)
            await server.start()
            self.servers.append(server)
            self.urls.append(server.url)

    async def _start_children(self) -> None:
        for index, key in enumerate(self.keys):
            # Stages on one machine share its cores: OpenMP threads that spin while they wait would steal them
            # from the stage whose turn it is (measured 10x slower here); waiting passively costs nothing.
            env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, KEY_ENV: key.secret.hex()}
            if self.threads_per_stage:
                env["OMP_NUM_THREADS"] = str(self.threads_per_stage)
            options = {**self.server_options, **self.stage_options.get(index, {})}
            args = [sys.executable, "-m", "node.cli.stage_process", "--model-dir", str(self.model_dir),
                    "--controller", self.controller.address]
            if self.threads_per_stage:
                args += ["--threads", str(self.threads_per_stage)]
            for name, value in options.items():
                args += [f"--{name.replace('_', '-')}", str(value)]
            process = await asyncio.create_subprocess_exec(*args, env=env, stdout=asyncio.subprocess.PIPE)
            line = (await asyncio.wait_for(process.stdout.readline(), 120)).decode().strip()
            if not line.startswith("listening "):
                raise RuntimeError(f"stage {index} process did not start (said {line!r})")
            url = line.split(" ", 1)[1]
            self.children.append(_ChildStage(process, url))
            self.urls.append(url)

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop()
        self.servers = []
        for child in self.children:
            if child.process.returncode is None:
                child.process.terminate()
                try:
                    await asyncio.wait_for(child.process.wait(), 10)
                except asyncio.TimeoutError:
                    child.process.kill()
        self.children = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------------------------------ jobs

    def spec(self, prompt_token_ids: Sequence[int], sampling: SamplingParams | None = None, seed: int = 0) -> JobSpec:
        assert self.assignment is not None, "start() first"
        stages = tuple(StageAssignment(s.worker, s.layer_start, s.layer_end) for s in self.assignment.stages)
        return JobSpec(self.model_id, tuple(prompt_token_ids), sampling or SamplingParams(), seed, self.group_id, stages,
                       precision=self.precision)

    async def run(self, spec: JobSpec, on_tokens: Callable[[list[int]], Any] | None = None) -> tuple[int, ...]:
        """Submit `spec` at stage 0 and follow it to the end; raises StageClientError when it fails."""
        first = self.clients[0]
        job = await first.submit(spec)
        output: list[int] = []
        async for event in first.stream(job):
            if "tokens" in event:
                output.extend(event["tokens"])
                if on_tokens is not None:
                    on_tokens(event["tokens"])
            elif "done" in event:
                return tuple(event["output_token_ids"])
            elif "error" in event:
                raise StageClientError(502, event["error"]["code"], event["error"]["message"])
        raise StageClientError(502, "stream_ended", f"job {job}: the stream ended without a result")

    async def generate(self, prompt_token_ids, sampling: SamplingParams | None = None, seed: int = 0, on_tokens=None):
        return await self.run(self.spec(prompt_token_ids, sampling, seed), on_tokens)

    async def stage_results(self, job_id: str) -> list[StageResult]:
        return list(await asyncio.gather(*[client.stage_result(job_id) for client in self.clients]))

    async def stats(self) -> list[dict]:
        return list(await asyncio.gather(*[client.stats() for client in self.clients]))
