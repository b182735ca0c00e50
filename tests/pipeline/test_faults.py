"""Neighbours that lie, vanish, stall or send garbage fail the sequences they touch; the stage stays up."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from node.pipeline.assignment import Assignment, PeerStage
from node.pipeline.client import StageClient, StageClientError
from node.pipeline.control import sign_control
from node.pipeline.link import LINK_PATH, REFUSED_HEADER, OutboundLink
from node.pipeline.local import LocalPipeline
from node.pipeline.server import StageServer
from node.pipeline.wire import encode_frame
from node.protocol.job import SamplingParams
from node.protocol.signing import SigningKey

LONG = SamplingParams(max_new_tokens=200)
SHORT = SamplingParams(max_new_tokens=12)


async def wait_for(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_malformed_frame_fails_only_the_sequence_it_names(llama_dir):
    async with LocalPipeline(llama_dir, 3) as pipe:
        victim = pipe.spec([1, 2, 3], SamplingParams(max_new_tokens=300), seed=1)
        bystander = pipe.spec([4, 5, 6], SamplingParams(max_new_tokens=60), seed=2)
        runs = [asyncio.create_task(pipe.run(victim)), asyncio.create_task(pipe.run(bystander))]
        await wait_for(lambda: len(pipe.servers[1].sequences) == 2)
        garbage = encode_frame([(victim.job_id, 3, pipe.servers[0].engine.model.embed_tokens.weight[:1])], "fp32")[:-7]
        assert pipe.servers[0]._outbound.send(garbage)  # the real link from stage 0 carries it
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
        assert isinstance(outcomes[0], StageClientError) and "malformed frame from stage 0" in outcomes[0].message
        assert len(outcomes[1]) == 60
        assert len(await pipe.generate([7, 8], SHORT)) == 12  # the stages kept serving


async def test_a_stage_that_goes_away_fails_its_sequences_and_a_replacement_takes_over(llama_dir):
    async with LocalPipeline(llama_dir, 3, server_options={"stall_timeout_s": 5.0}) as pipe:
        run = asyncio.create_task(pipe.run(pipe.spec([1, 2, 3], LONG, seed=1)))
        await wait_for(lambda: pipe.servers[2].engine.stats.steps > 5)
        await pipe.servers[2].stop()
        with pytest.raises(StageClientError) as failed:
            await run
        assert "link" in failed.value.message and "stage" in failed.value.message
        with pytest.raises(StageClientError, match="not connected"):
            await pipe.clients[0].submit(pipe.spec([1, 2], SHORT))
        # a replacement worker for stage 2: every stage gets the new assignment; links re-point without reloading
        replacement = StageServer(SigningKey.generate(), model_dirs=[llama_dir], controllers=[pipe.controller.address])
        await replacement.start()
        old = pipe.assignment.stages
        peers = (old[0], old[1], PeerStage(replacement.key.address, replacement.url, old[2].layer_start, old[2].layer_end))
        engines = [pipe.servers[0].engine, pipe.servers[1].engine]
        pipe.servers[2] = replacement
        pipe.urls[2] = replacement.url
        pipe.keys[2] = replacement.key
        await asyncio.gather(*[c.assign(Assignment("local", pipe.model_id, i, peers)) for i, c in enumerate(pipe.clients)])
        pipe.assignment = Assignment("local", pipe.model_id, 0, peers)
        await pipe.wait_linked()
        assert [pipe.servers[0].engine, pipe.servers[1].engine] == engines
        assert len(await pipe.generate([1, 2, 3], SHORT)) == 12


async def test_a_restarted_neighbour_is_reconnected_with_backoff(llama_dir):
    async with LocalPipeline(llama_dir, 3) as pipe:
        assert len(await pipe.generate([1, 2], SHORT)) == 12
        with pytest.raises(StageClientError, match="already started here"):  # one job id, one run
            await pipe.generate([1, 2], SHORT)
        key, port = pipe.servers[1].key, pipe.servers[1].port
        await pipe.servers[1].stop()
        await wait_for(lambda: not pipe.servers[0].link_up)
        await asyncio.sleep(0.3)  # stage 0 keeps retrying meanwhile
        again = StageServer(key, port=port, model_dirs=[llama_dir], controllers=[pipe.controller.address])
        await again.start()
        pipe.servers[1] = again
        await pipe.clients[1].assign(Assignment("local", pipe.model_id, 1, pipe.assignment.stages))
        await pipe.wait_linked(timeout_s=15)
        assert len(await pipe.generate([1, 2], SHORT, seed=1)) == 12


async def test_a_stalled_neighbour_fails_the_sequences_waiting_on_it(llama_dir):
    def stall(job_id, stage_index, start, rows):
        if start == 8:
            time.sleep(1.5)  # stage 1 hangs in the middle of a job
        return rows

    options = {0: {"stall_timeout_s": 0.5}}
    async with LocalPipeline(llama_dir, 3, stage_options={1: {"tamper": stall}, **options}) as pipe:
        with pytest.raises(StageClientError, match="stalled"):
            await pipe.generate([1, 2, 3], LONG)
        await asyncio.sleep(1.5)
        assert len(await pipe.generate([1, 2, 3, 4, 5, 6, 7, 8, 9], SHORT)) == 12  # prompt past position 8


async def test_only_the_assigned_neighbour_may_link(llama_dir):
    async with LocalPipeline(llama_dir, 3) as pipe:
        impostor = SigningKey.generate()
        stages = list(pipe.assignment.stages)
        stages[0] = PeerStage(impostor.address, stages[0].url, 0, stages[0].layer_end)
        link = OutboundLink(impostor, Assignment("local", pipe.model_id, 0, tuple(stages)), on_lost=lambda reason: None)
        link.start()
        await wait_for(lambda: link.last_error is not None)
        await link.close()
        assert not link.connected.is_set() and "expects stage 0" in link.last_error
        assert len(await pipe.generate([1, 2], SHORT)) == 12  # the real link was not disturbed


async def test_nobody_sends_a_frame_before_its_hello_is_checked(llama_dir):
    # The attack: open /v1/link and send a 200 MiB first frame; a WebSocket buffers it whole before anyone
    # reads it. Now the hello rides in the upgrade request, so an anonymous client never gets a socket.
    async with LocalPipeline(llama_dir, 3) as pipe, aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(pipe.urls[1] + LINK_PATH)
        assert refused.value.status == 403 and "no Stagewise-Hello header" in refused.value.headers[REFUSED_HEADER]
        # a hello the real neighbour signed is good once: replayed, it answers no open challenge
        captured = {}
        original = OutboundLink._hello

        async def keep_hello(self, session, nonce):
            captured["hello"] = await original(self, session, nonce)
            return captured["hello"]

        OutboundLink._hello = keep_hello
        try:
            await pipe.servers[0]._outbound.close()
            pipe.servers[0]._outbound = None
            await pipe.servers[0].assign(Assignment("local", pipe.model_id, 0, pipe.assignment.stages))
            await pipe.wait_linked()
        finally:
            OutboundLink._hello = original
        with pytest.raises(aiohttp.WSServerHandshakeError) as replayed:
            await session.ws_connect(pipe.urls[1] + LINK_PATH, headers={"Stagewise-Hello": json.dumps(captured["hello"])})
        assert replayed.value.status == 403 and "no open challenge" in replayed.value.headers[REFUSED_HEADER]
        assert len(await pipe.generate([1, 2], SHORT)) == 12


async def test_a_neighbour_cannot_fill_a_stage_faster_than_it_computes(llama_dir):
    def slow(job_id, stage_index, start, rows):
        time.sleep(0.05)  # stage 1 computes slowly; stage 0 sends as fast as it can
        return rows

    options = {1: {"tamper": slow, "max_inbox_bytes": 1}}
    async with LocalPipeline(llama_dir, 3, stage_options=options) as pipe:
        runs = [pipe.generate([1, 2, 3, i], SamplingParams(max_new_tokens=20), seed=i) for i in range(6)]
        assert all(len(tokens) == 20 for tokens in await asyncio.gather(*runs))  # held back, not dropped
        frame = 4 * 4 * pipe.servers[0].engine.model.config.hidden_size + 1024  # the largest frame here, generously
        assert 0 < pipe.servers[1]._inbox.peak_bytes <= 1 + 6 * frame


async def test_a_neighbour_that_keeps_the_inbox_full_is_dropped(llama_dir):
    def stuck(job_id, stage_index, start, rows):
        time.sleep(1.0)
        return rows

    options = {1: {"tamper": stuck, "max_inbox_bytes": 1, "stall_timeout_s": 0.3}}
    async with LocalPipeline(llama_dir, 3, stage_options=options) as pipe:
        runs = [pipe.generate([1, 2, 3, i], SamplingParams(max_new_tokens=20), seed=i) for i in range(3)]
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
        assert any("overfilled" in str(outcome) for outcome in outcomes), outcomes


async def test_a_next_stage_that_stops_reading_is_dropped_not_buffered_for(llama_dir):
    # The attack: the next stage accepts the link and never reads; everything this stage sends waited in
    # an unbounded queue. Stage 1 here stops reading after one frame (its inbox full, its compute stuck).
    def stuck(job_id, stage_index, start, rows):
        time.sleep(3)
        return rows

    options = {0: {"max_send_queue_bytes": 8 << 20}, 1: {"tamper": stuck, "max_inbox_bytes": 1, "stall_timeout_s": 60}}
    async with LocalPipeline(llama_dir, 3, stage_options=options) as pipe:
        run = asyncio.create_task(pipe.generate([1, 2, 3], SHORT))
        await wait_for(lambda: pipe.servers[1]._inbox.bytes > 1)
        link = pipe.servers[0]._outbound
        frame = b"\0" * (1 << 20)
        sent = 0
        while link.send(frame) and sent < 200:
            sent += 1
            await asyncio.sleep(0.005)
        assert sent < 200 and link.queued_bytes <= 16 << 20  # gave up on stage 1 instead of holding 200 MiB
        with pytest.raises(StageClientError, match="did not take what it was sent"):
            await run  # and its sequences fail at once, saying why


async def test_http_errors_are_json_with_the_right_status(llama_dir):
    async with LocalPipeline(llama_dir, 3) as pipe:
        first, middle = pipe.clients[0], pipe.clients[1]
        spec = pipe.spec([1, 2, 3], SHORT)
        with pytest.raises(StageClientError) as error:
            await middle.submit(spec)
        assert (error.value.status, error.value.code) == (409, "not_stage_zero")
        with pytest.raises(StageClientError) as error:
            await first.submit(pipe.spec([1, 2, 10_000], SHORT))
        assert (error.value.status, error.value.code) == (422, "bad_job")
        with pytest.raises(StageClientError) as error:
            await first.stage_result("0x" + "ab" * 32)
        assert error.value.status == 404
        other_group = spec.__class__(**{**spec.__dict__, "group_id": "elsewhere"})
        with pytest.raises(StageClientError) as error:
            await first.submit(other_group)
        assert (error.value.status, error.value.code) == (422, "wrong_group")
        stage0 = pipe.keys[0].address
        async with aiohttp.ClientSession() as session:
            headers = sign_control(pipe.controller, stage0, "POST", "/v1/jobs", b"{not json")
            async with session.post(pipe.urls[0] + "/v1/jobs", data=b"{not json", headers=headers) as response:
                assert response.status == 400 and (await response.json())["error"]["code"] == "bad_spec"
            headers = sign_control(pipe.controller, stage0, "PUT", "/v1/assignment", b'{"group_id": "x"}')
            async with session.put(pipe.urls[0] + "/v1/assignment", data=b'{"group_id": "x"}', headers=headers) as response:
                assert response.status == 422 and "missing" in (await response.json())["error"]["message"]
        await pipe.run(spec)
        result = await middle.stage_result(spec.job_id_hex)
        assert result.stage_index == 1 and result.work_units == 2 * result.token_count
        assert (await middle.status(spec.job_id_hex))["status"] == "done"


async def test_a_server_without_the_model_says_so(llama_dir, tmp_path):
    orchestrator = SigningKey.generate()
    server = StageServer(SigningKey.generate(), model_dirs=[], controllers=[orchestrator.address])
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = StageClient(server.url, session, controller=orchestrator)
            stage = PeerStage(server.key.address, server.url, 0, 6)
            with pytest.raises(StageClientError) as error:
                await client.assign(Assignment("g", "0x" + "11" * 32, 0, (stage,)))
            assert (error.value.status, error.value.code) == (404, "unknown_model")
    finally:
        await server.stop()


async def test_an_assignment_past_the_models_layers_is_refused(llama_dir):
    orchestrator = SigningKey.generate()
    server = StageServer(SigningKey.generate(), model_dirs=[llama_dir], controllers=[orchestrator.address])
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = StageClient(server.url, session, controller=orchestrator)
            from node.pipeline.weights import model_id

            stage = PeerStage(server.key.address, server.url, 0, 9)  # the model has 6 layers
            with pytest.raises(StageClientError) as error:
                await client.assign(Assignment("g", model_id(llama_dir), 0, (stage,)))
            assert (error.value.status, error.value.code) == (422, "bad_model")
            assert (await client.health())["assignment"] is None
    finally:
        await server.stop()


async def test_a_job_id_runs_once_on_a_stage_however_many_jobs_follow_and_across_restarts(llama_dir, tmp_path):
    """A neighbour that re-sends an old job over the link (after flooding the stage's caches) would get two
    claims for one chunk out of an honest stage, one of them to pass off as equivocation (PROTOCOL I2)."""
    from node.pipeline.started_jobs import StartedJobs

    path = tmp_path / "started-jobs.txt"
    async with LocalPipeline(llama_dir, 2, server_options={"keep_finished": 1},
                             stage_options={1: {"started": StartedJobs(path)}}) as pipe:
        first = pipe.spec([1, 2], SHORT, seed=1)
        await pipe.run(first)
        for seed in range(2, 6):
            await pipe.run(pipe.spec([1, 2], SHORT, seed=seed))
        stage1 = pipe.servers[1]
        assert first.job_id_hex not in stage1.sequences  # out of every cache
        stage1._on_job({"type": "job", "spec": first.to_dict()})
        assert first.job_id_hex not in stage1.sequences  # refused, not opened again
    assert first.job_id_hex in StartedJobs(path)  # a restarted stage still knows it


def test_a_flood_of_challenge_requests_evicts_no_neighbours_challenge():
    # Found by the review of issue 15: challenges were kept in a table of 64, oldest evicted, so anyone
    # asking for challenges fast enough kept the honest neighbour's link down. Now a challenge is stateless
    # (time | random | MAC) until a verified hello spends it.
    from node.pipeline.link import Challenges

    clock = [1_800_000_000.0]
    challenges = Challenges(ttl_s=30, clock=lambda: clock[0])
    honest = challenges.issue()
    for _ in range(10_000):
        challenges.issue()
    assert challenges.fresh(honest)
    challenges.spend(honest)
    assert not challenges.fresh(honest)  # good once: a replayed hello is refused
    forged = honest[:16] + bytes(16)
    assert not challenges.fresh(forged) and not challenges.fresh(b"\x01" * 32)
    late = challenges.issue()
    clock[0] += 31
    assert not challenges.fresh(late)  # expired
