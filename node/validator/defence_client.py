"""Asking an accused stage for its defence: the rows it received, from its worker's stage server.

`GET {stage_url}/v1/jobs/{job_id}/inputs` answers the chunks the stage received for the job, each with the
claim its predecessor signed and the rows as hex (node/worker/receipt_book.py keeps them until the verdict). The answer
comes from the accused worker, so it is parsed as hostile: bounded in size and depth, every field checked.
The verdict waits for it up to `deadline_s` while the worker cannot be reached (or answers garbage); a 404
(nothing kept) or no answer by the deadline leaves the stage blamed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from ledger import json_input
from ledger.errors import InvalidInput, StagewiseError
from node.protocol.handoff import INPUTS_ROUTE, ReceivedHandoff, handoff_from_json
from node.protocol.job import JobSpec

log = logging.getLogger(__name__)

MAX_DEFENCE_BYTES = 256 << 20


class DefenceError(InvalidInput):
    """A defence document that does not parse: the message says where."""


class NoDefence(StagewiseError):
    """The accused worker answered that it has no defence: waiting longer changes nothing."""


def parse_defence(body: bytes, spec: JobSpec, stage: int) -> tuple[ReceivedHandoff, ...]:
    try:
        data = json_input.loads(body, max_depth=4)
    except json_input.JsonInputError as error:
        raise DefenceError(f"not JSON: {error}") from None
    if not isinstance(data, dict) or data.get("job_id") != spec.job_id_hex or data.get("stage_index") != stage:
        raise DefenceError(f"not the inputs of stage {stage} of job {spec.job_id_hex}")
    items = data.get("handoffs")
    if not isinstance(items, list) or len(items) > 1 << 16:
        raise DefenceError("handoffs must be a list of chunks")
    try:
        handoffs = tuple(handoff_from_json(spec.job_id_hex, stage - 1, item) for item in items)
    except (KeyError, TypeError, ValueError) as error:
        raise DefenceError(f"a chunk is malformed: {error}") from None
    if any(not handoff.rows for handoff in handoffs):
        raise DefenceError("every chunk needs its rows")
    return handoffs


class StageDefences:
    """The validator's defence source: `await defences(spec, stage)` -> the stage's received chunks, or None."""

    def __init__(self, stage_url_of: Callable[[str], str | None], deadline_s: float = 30.0, poll_s: float = 0.5):
        self.stage_url_of, self.deadline_s, self.poll_s = stage_url_of, deadline_s, poll_s

    async def __call__(self, spec: JobSpec, stage: int, limit: int = MAX_DEFENCE_BYTES, *, deadline_s: float | None = None
                       ) -> tuple[ReceivedHandoff, ...] | None:
        worker = spec.stages[stage].worker
        loop = asyncio.get_running_loop()
        deadline_s = self.deadline_s if deadline_s is None else deadline_s
        deadline = loop.time() + deadline_s
        last: Any = "no stage URL known"
        async with aiohttp.ClientSession() as session:
            while True:
                url = self.stage_url_of(worker)
                if url is not None:
                    try:
                        return await self._fetch(session, url.rstrip("/") + INPUTS_ROUTE.format(job_id=spec.job_id_hex),
                                                 spec, stage, deadline - loop.time(), min(limit, MAX_DEFENCE_BYTES))
                    except NoDefence as refused:  # the worker answered: it kept nothing to defend itself with
                        log.warning("job %s: stage %d (%s) has no defence: %s", spec.job_id_hex, stage, worker, refused)
                        return None
                    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, DefenceError) as error:
                        last = f"{type(error).__name__}: {error}"
                if loop.time() + self.poll_s >= deadline:
                    log.warning("job %s: no received rows from stage %d (%s) within %.0f s: %s",
                                spec.job_id_hex, stage, worker, deadline_s, last)
                    return None
                await asyncio.sleep(self.poll_s)

    async def _fetch(self, session, url: str, spec: JobSpec, stage: int, left_s: float, limit: int
                     ) -> tuple[ReceivedHandoff, ...]:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=max(1.0, left_s))) as response:
            if response.status == 404:
                raise NoDefence("it keeps no received rows for the job (HTTP 404)")
            if response.status != 200:
                raise DefenceError(f"HTTP {response.status}")
            if (response.content_length or 0) > limit:
                raise DefenceError(f"the defence is larger than this job's rows can be ({limit} bytes)")
            body = bytearray()
            async for chunk in response.content.iter_chunked(1 << 20):  # to the end, never past the limit
                body += chunk
                if len(body) > limit:
                    raise DefenceError(f"the defence is larger than this job's rows can be ({limit} bytes)")
            return await asyncio.to_thread(parse_defence, bytes(body), spec, stage)
