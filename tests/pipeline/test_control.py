"""Only the orchestrator a stage server trusts may assign it, release it or start jobs on it (PROTOCOL I1)."""

from __future__ import annotations

import json

import aiohttp
import pytest

from node.pipeline.assignment import Assignment, PeerStage
from node.pipeline.client import StageClient, StageClientError
from node.pipeline.control import ControlGuard, ControlRefused, sign_control
from node.pipeline.local import LocalPipeline
from node.pipeline.server import StageServer
from node.pipeline.weights import model_id
from node.protocol.job import SamplingParams
from node.protocol.signing import SigningKey

SHORT = SamplingParams(max_new_tokens=6)


async def send(session, url, method, path, body: bytes = b"", headers=None):
    async with session.request(method, url + path, data=body or None, headers=headers or {}) as response:
        return response.status, await response.json()


async def test_unsigned_and_untrusted_control_requests_change_nothing(llama_dir):
    orchestrator, stranger = SigningKey.generate(), SigningKey.generate()
    server = StageServer(SigningKey.generate(), model_dirs=[llama_dir], controllers=[orchestrator.address])
    await server.start()
    try:
        stage = PeerStage(server.key.address, server.url, 0, 6)
        body = json.dumps(Assignment("g", model_id(llama_dir), 0, (stage,)).to_dict()).encode()
        async with aiohttp.ClientSession() as session:
            status, error = await send(session, server.url, "PUT", "/v1/assignment", body)
            assert (status, error["error"]["code"]) == (401, "unsigned_request")
            assert server.assignment is None

            headers = sign_control(stranger, server.key.address, "PUT", "/v1/assignment", body)
            status, error = await send(session, server.url, "PUT", "/v1/assignment", body, headers)
            assert (status, error["error"]["code"]) == (403, "untrusted_signer")
            assert server.assignment is None

            # a trusted signature over another body, another route or another server does not carry over
            headers = sign_control(orchestrator, server.key.address, "PUT", "/v1/assignment", b"{}")
            status, error = await send(session, server.url, "PUT", "/v1/assignment", body, headers)
            assert (status, error["error"]["code"]) == (401, "bad_signature")
            headers = sign_control(orchestrator, stranger.address, "PUT", "/v1/assignment", body)
            status, error = await send(session, server.url, "PUT", "/v1/assignment", body, headers)
            assert (status, error["error"]["code"]) == (401, "bad_signature")
            assert server.assignment is None

            headers = sign_control(orchestrator, server.key.address, "PUT", "/v1/assignment", body)
            status, answer = await send(session, server.url, "PUT", "/v1/assignment", body, headers)
            assert status == 200 and server.assignment is not None

            status, error = await send(session, server.url, "PUT", "/v1/assignment", body, headers)  # replayed
            assert (status, error["error"]["code"]) == (401, "replayed_request")
            status, error = await send(session, server.url, "DELETE", "/v1/assignment")
            assert status == 401 and server.assignment is not None
            stale = sign_control(orchestrator, server.key.address, "DELETE", "/v1/assignment", now=0)
            status, error = await send(session, server.url, "DELETE", "/v1/assignment", headers=stale)
            assert (status, error["error"]["code"]) == (401, "stale_request") and server.assignment is not None

            status, health = await send(session, server.url, "GET", "/health")  # reads stay public
            assert status == 200 and health["assignment"]["group_id"] == "g"
            await StageClient(server.url, session, controller=orchestrator).release()
            assert server.assignment is None
    finally:
        await server.stop()


async def test_a_stranger_cannot_start_a_job_with_a_seed_of_its_choosing(llama_dir):
    async with LocalPipeline(llama_dir, 2) as pipe:
        async with aiohttp.ClientSession() as session:
            impostor = StageClient(pipe.urls[0], session, controller=SigningKey.generate())
            with pytest.raises(StageClientError) as refused:
                await impostor.submit(pipe.spec([1, 2, 3], SHORT, seed=666))
            assert (refused.value.status, refused.value.code) == (403, "untrusted_signer")
            body = json.dumps({"spec": pipe.spec([1, 2, 3], SHORT, seed=667).to_dict()}).encode()
            status, error = await send(session, pipe.urls[0], "POST", "/v1/jobs", body)
            assert status == 401
        assert not pipe.servers[0].sequences
        assert len(await pipe.generate([1, 2, 3], SHORT, seed=1)) == 6  # the pipeline's own key still works


def test_the_nonce_memory_is_bounded_and_never_lets_a_dropped_nonce_replay():
    orchestrator = SigningKey.generate()
    clock = [1_000_000.0]
    guard = ControlGuard("0x" + "22" * 20, frozenset([orchestrator.address]), max_nonces=3, clock=lambda: clock[0])
    signed = []
    for second in range(5):
        headers = sign_control(orchestrator, guard.audience, "DELETE", "/v1/assignment", now=clock[0] + second)
        assert guard.check("DELETE", "/v1/assignment", headers, b"") == orchestrator.address
        signed.append(headers)
    assert len(guard._seen) == 3
    for headers in signed:  # remembered or below the floor: refused either way
        with pytest.raises(ControlRefused, match="already used"):
            guard.check("DELETE", "/v1/assignment", headers, b"")
    clock[0] += 10_000  # long after: old nonces are forgotten, their timestamps are stale
    fresh = sign_control(orchestrator, guard.audience, "DELETE", "/v1/assignment", now=clock[0])
    guard.check("DELETE", "/v1/assignment", fresh, b"")
    assert len(guard._seen) == 1
    with pytest.raises(ControlRefused) as stale:
        guard.check("DELETE", "/v1/assignment", signed[0], b"")
    assert stale.value.code == "stale_request"


def test_a_request_recorded_before_a_restart_is_refused_after_it():
    """The nonces a stage server saw die with it: without a floor at its start, a request recorded by anyone on
    the way (a release, an assignment) could be played again right after a restart, inside the skew window."""
    orchestrator, audience = SigningKey.generate(), "0x" + "22" * 20
    clock = [1_000_000.0]
    headers = sign_control(orchestrator, audience, "DELETE", "/v1/assignment", now=clock[0])
    before = ControlGuard(audience, frozenset([orchestrator.address]), clock=lambda: clock[0])
    assert before.check("DELETE", "/v1/assignment", headers, b"") == orchestrator.address
    clock[0] += 3  # the server restarts three seconds later: a new guard, no nonces
    after = ControlGuard(audience, frozenset([orchestrator.address]), clock=lambda: clock[0])
    with pytest.raises(ControlRefused, match="before this stage server started") as refused:
        after.check("DELETE", "/v1/assignment", headers, b"")
    assert refused.value.status == 401
    fresh = sign_control(orchestrator, audience, "DELETE", "/v1/assignment", now=clock[0])
    assert after.check("DELETE", "/v1/assignment", fresh, b"") == orchestrator.address
