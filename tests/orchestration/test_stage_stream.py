"""The validator reads a job's token stream from stage 0 and takes no more than the job may produce.

Found by the review of issue 15: a hostile stage 0 streamed 12 million tokens for a job of
max_new_tokens=4, and the validator buffered every one (for up to the hour a job may take).
"""

from __future__ import annotations

import pytest
from aiohttp import web

from node.orchestration.grouping import Group, Stage
from node.orchestration.pipeline_driver import StageFailure
from node.orchestration.stage_control import HttpPipelineDriver
from node.protocol.job import JobSpec, SamplingParams, StageAssignment
from node.protocol.signing import SigningKey


async def test_a_stage_that_streams_more_tokens_than_the_job_allows_is_failed():
    async def post_job(request):
        await request.read()
        return web.json_response({"job_id": "x"}, status=202)

    async def stream(request):
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for _ in range(400):
            await response.write(b'{"tokens":[' + b"1," * 30000 + b"1]}\n")
        return response

    app = web.Application()
    app.add_routes([web.post("/v1/jobs", post_job), web.get("/v1/jobs/{job}/stream", stream),
                    web.get("/health", lambda request: web.json_response({"assignment": {"group_id": "g"}}))])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    worker = SigningKey.generate()
    spec = JobSpec(model_id="0x" + "11" * 32, prompt_token_ids=(1,), sampling=SamplingParams(max_new_tokens=4), seed=1,
                   group_id="g", stages=(StageAssignment(worker.address, 0, 2),))
    driver = HttpPipelineDriver(key=SigningKey.generate(), model_id=spec.model_id)
    driver._urls["g"] = (url,)
    seen: list[int] = []
    try:
        with pytest.raises(StageFailure) as failed:
            await driver.run(Group("g", (Stage(worker.address, 0, 2, "r", 1.0),)), spec, seen.extend)
    finally:
        await driver.close()
        await runner.cleanup()
    assert failed.value.worker == worker.address and "more tokens than" in failed.value.reason
    assert len(seen) <= spec.sampling.max_new_tokens
