"""The simulated side of bench/scale.py: many workers' stage servers in one process, their signed messages and
the load they send, and what a process costs (/proc).

A simulated stage 0 takes jobs (POST /v1/jobs, 202) and streams them at once, computing nothing: the job's
`max_new_tokens` zeros, then done (GET /v1/jobs/{id}/stream, ndjson as node/pipeline/server.py writes it)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from node.protocol.signing import SigningKey, keccak256
from node.protocol.worker_messages import Capacity, make_heartbeat, make_leave, make_registration

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# ------------------------------------------------------------------------------------------ measuring a process


def cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds of process `pid` (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# ------------------------------------------------------------------------------------------ simulated stage servers


class StageServers:
    """One stage server per simulated worker, all in one aiohttp app: the port a request arrived on says whose."""

    def __init__(self) -> None:
        self.by_port: dict[int, str] = {}
        self.assignments: dict[str, dict | None] = {}
        self.requests = {"PUT": 0, "DELETE": 0, "GET": 0, "POST": 0}
        self.jobs: dict[str, int] = {}  # job id -> tokens to stream (taken, not yet streamed)
        self.job_times: list[float] = []  # monotonic time of every job taken
        self._runner: web.AppRunner | None = None

    async def start(self, workers: list[str]) -> list[str]:
        app = web.Application()
        app.add_routes([web.put("/v1/assignment", self._put), web.delete("/v1/assignment", self._delete),
                        web.get("/health", self._health), web.post("/v1/jobs", self._job),
                        web.get("/v1/jobs/{job_id}/stream", self._stream)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        urls = []
        for address in workers:
            site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=64)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            self.by_port[port] = address
            self.assignments[address] = None
            urls.append(f"http://127.0.0.1:{port}")
        return urls

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _worker(self, request: web.Request) -> str:
        return self.by_port[request.transport.get_extra_info("sockname")[1]]

    async def _put(self, request: web.Request) -> web.Response:
        self.requests["PUT"] += 1
        if "X-Stagewise-Signature" not in request.headers:
            return web.json_response({"error": {"code": "unsigned", "message": "control requests are signed"}}, status=401)
        assignment = await request.json()
        self.assignments[self._worker(request)] = assignment
        return web.json_response({"assignment": assignment})

    async def _delete(self, request: web.Request) -> web.Response:
        self.requests["DELETE"] += 1
        self.assignments[self._worker(request)] = None
        return web.json_response({"assignment": None})

    async def _job(self, request: web.Request) -> web.Response:
        self.requests["POST"] += 1
        if "X-Stagewise-Signature" not in request.headers:
            return web.json_response({"error": {"code": "unsigned", "message": "control requests are signed"}}, status=401)
        spec = (await request.json())["spec"]
        job_id = _job_id(spec)
        self.jobs[job_id] = int(spec["sampling"]["max_new_tokens"])
        self.job_times.append(time.monotonic())
        return web.json_response({"job_id": job_id}, status=202)

    async def _stream(self, request: web.Request) -> web.Response:
        tokens = [0] * self.jobs.pop(request.match_info["job_id"], 0)
        body = json.dumps({"tokens": tokens}) + "\n" + json.dumps(
            {"done": True, "finish_reason": "length", "output_token_ids": tokens}) + "\n"
        return web.Response(body=body.encode(), content_type="application/x-ndjson")

    async def _health(self, request: web.Request) -> web.Response:
        self.requests["GET"] += 1
        address = self._worker(request)
        assignment = self.assignments[address]
        return web.json_response({"status": "ok", "address": address, "assignment": assignment, "in_flight": 0,
                                  "link_up": True if assignment else None})



def _job_id(spec: dict) -> str:
    """JobSpec's id of the spec as the validator sent it (keccak256 of its canonical JSON), without parsing
    it into a JobSpec: the stage servers share the bench's one process with the load it sends."""
    return "0x" + keccak256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hex()


# ------------------------------------------------------------------------------------------ load


async def post_many(session: aiohttp.ClientSession, url: str, bodies: list[bytes], concurrency: int,
                    at: list[float] | None = None, deadline_s: float = float("inf")) -> dict:
    """POST every body (at its planned monotonic time when `at` is given), `concurrency` in flight; latencies
    from the moment each request starts, lateness of the starts against the plan, statuses."""
    latencies: list[float] = []
    late: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    queue = list(range(len(bodies)))
    queue.reverse()
    accepted: list[int] = []
    stop_at = time.monotonic() + deadline_s

    async def one_client() -> None:
        while queue and time.monotonic() < stop_at:
            index = queue.pop()
            if at is not None:
                wait = at[index] - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                late.append(max(0.0, time.monotonic() - at[index]))
            started = time.monotonic()
            try:
                async with session.post(url, data=bodies[index], headers={"Content-Type": "application/json"}) as response:
                    text, status = await response.read(), response.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                text, status = repr(error).encode(), 0  # counted as status 0
            latencies.append(time.monotonic() - started)
            statuses[status] = statuses.get(status, 0) + 1
            if status in (200, 201):
                accepted.append(index)
            if (status >= 400 or status == 0) and len(errors) < 3:
                errors.append(text[:300].decode("utf-8", "replace"))

    started = time.monotonic()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return {"seconds": time.monotonic() - started, "ended": time.monotonic(), "sent": len(latencies),
            "accepted": sorted(accepted), "latencies": latencies, "late": late, "statuses": statuses,
            "errors": errors}


def sign_in_pool(kind: str, secrets: list[bytes], extra: list, workers: int = 2) -> list[bytes]:
    """Signed message bodies, signed by `workers` processes (signing is the load generator's heaviest work)."""
    from concurrent.futures import ProcessPoolExecutor

    chunk = max(1, len(secrets) // (workers * 4))
    parts = [(kind, secrets[i:i + chunk], extra[i:i + chunk]) for i in range(0, len(secrets), chunk)]
    with ProcessPoolExecutor(workers) as pool:
        return [body for part in pool.map(_sign_part, parts) for body in part]


def _sign_part(part: tuple[str, list[bytes], list]) -> list[bytes]:
    kind, secrets, extra = part
    bodies = []
    for secret, value in zip(secrets, extra):
        key = SigningKey(secret)
        if kind == "register":
            url, region, validator, chain_id, stamp = value
            signed = make_registration(key, Capacity(8 << 30, 20_000.0), region, url, stamp, validator=validator,
                                       chain_id=chain_id)
        elif kind == "heartbeat":
            signed = make_heartbeat(key, now=value)
        else:
            signed = make_leave(key)
        bodies.append(json.dumps(signed.to_json()).encode())
    return bodies
