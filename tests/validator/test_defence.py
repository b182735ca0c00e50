"""A receiving stage's defence (PROTOCOL I2): the rows it received, signed by its predecessor, judged against
the replay over every entry. Real rows from a two-stage pipeline of the tiny model; no database."""

import asyncio
import dataclasses

import pytest
import torch

from node.pipeline.local import LocalPipeline
from node.pipeline.model import replay
from node.pipeline.weights import load_stage
from node.pipeline.wire import wire_bytes
from node.protocol.handoff import ReceivedHandoff, rows_digest
from node.protocol.job import SamplingParams
from node.validator.defence import check_defence
from node.validator.defence_client import DefenceError, parse_defence

PROMPT = [1, 5, 9, 14, 3]


@pytest.fixture(scope="module")
def received(model_dir):
    """What stage 1 received in an honest job (40 tokens: the prefill and two decode chunks), stage 0's
    receipt proofs, stage 0's key, and the replay of stage 0's layers."""
    kept = []

    async def run():
        async with LocalPipeline(model_dir, 2, stage_options={1: {"on_result": kept.append}}) as pipe:
            spec = pipe.spec(PROMPT, SamplingParams(max_new_tokens=40), seed=3)
            output = await pipe.run(spec)
            (result0, _) = await pipe.stage_results(spec.job_id_hex)
            return spec, output, result0, pipe.keys[0]

    spec, output, result0, sender = asyncio.run(run())
    (result1,) = kept
    hidden, _ = replay(load_stage(model_dir), PROMPT + list(output[:-1]), [s.layer_end for s in spec.stages])
    return result1.handoffs, result0.proofs, sender, hidden[0]


def check(received, handoffs=None, sender=None):
    honest, proofs, key, replayed = received
    return check_defence(honest if handoffs is None else handoffs, sender or key.address, proofs, replayed, len(PROMPT))


def resigned(key, handoff: ReceivedHandoff, rows: bytes) -> ReceivedHandoff:
    """The sender signing other bytes for the chunk, with the same proof (what a quiet alteration looks like)."""
    claim = dataclasses.replace(handoff.claim, rows_digest=rows_digest(rows))
    return ReceivedHandoff(claim, claim.sign(key), rows)


def test_honest_inputs_are_a_valid_defence_within_the_tolerance(received):
    result = check(received)
    assert result.valid and not result.altered, result.reason
    assert result.worst_rel_l1 < 1e-5  # fp32 on the wire, KV-cache decoding against one prefill: ~2e-6
    assert result.inputs.shape == received[3].shape


def test_signed_rows_that_differ_from_the_replay_outside_the_proof_convict_the_sender(received):
    handoffs, _, key, _ = received
    first = handoffs[0]
    rows = torch.frombuffer(bytearray(first.rows), dtype=torch.float32).view(first.claim.count, -1)
    quieter = rows.clone()
    quieter[rows.abs() < rows.abs().flatten().kthvalue(rows.numel() - 128).values] *= 0.99
    altered = (resigned(key, first, wire_bytes(quieter, "fp32")),) + handoffs[1:]
    result = check(received, altered)
    assert result.valid and result.altered and result.worst_row < len(PROMPT), result.reason


@pytest.mark.parametrize("defect, message", [
    ("unsigned", "not what the sender signed"),
    ("other_bytes", "not the bytes the sender signed"),
    ("missing_chunk", "chunks received for the job's"),
    ("other_proof", "not what the sender signed"),
])
def test_rows_the_sender_did_not_sign_for_the_whole_job_are_no_defence(received, defect, message):
    handoffs, proofs, key, _ = received
    first = handoffs[0]
    if defect == "unsigned":  # the receiver signs rows in the sender's name: its own key is not the sender's
        from node.protocol.signing import SigningKey

        forged = (resigned(SigningKey.generate(), first, first.rows),) + handoffs[1:]
    elif defect == "other_bytes":
        forged = (dataclasses.replace(first, rows=first.rows[:-4] + bytes(4)),) + handoffs[1:]
    elif defect == "missing_chunk":
        forged = handoffs[:-1]
    else:
        claim = dataclasses.replace(first.claim, proof=bytes(len(first.claim.proof)))
        forged = (ReceivedHandoff(claim, claim.sign(key), first.rows),) + handoffs[1:]
    result = check(received, forged)
    assert not result.valid and message in result.reason


def test_a_defence_is_parsed_as_hostile_input(received, model_dir):
    import json

    from node.pipeline.weights import model_id
    from node.protocol.job import JobSpec, StageAssignment

    handoffs, _, key, _ = received
    job_id = "0x" + handoffs[0].claim.job_id.hex()
    good = {"job_id": job_id, "stage_index": 1, "handoffs": [h.to_json() for h in handoffs]}
    spec = JobSpec(model_id(model_dir), tuple(PROMPT), SamplingParams(max_new_tokens=40), 3, "local",
                   (StageAssignment(key.address, 0, 3), StageAssignment(key.address, 3, 6)))
    with pytest.raises(DefenceError, match="not the inputs of stage 1"):
        parse_defence(json.dumps(good).encode(), spec, 1)  # another job's rows
    with pytest.raises(DefenceError, match="not JSON"):
        parse_defence(b"[" * 100_000, spec, 1)
    bare = {**good, "job_id": spec.job_id_hex, "handoffs": [h.to_json(with_rows=False) for h in handoffs]}
    with pytest.raises(DefenceError, match="needs its rows"):
        parse_defence(json.dumps(bare).encode(), spec, 1)
    odd = {**good, "job_id": spec.job_id_hex, "handoffs": [{**good["handoffs"][0], "chunk": -1}]}
    with pytest.raises(DefenceError, match="malformed"):
        parse_defence(json.dumps(odd).encode(), spec, 1)


async def serve(handler):
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/v1/jobs/{job_id}/inputs", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def test_a_worker_that_kept_nothing_is_not_waited_for(received, model_dir):
    import time

    from aiohttp import web

    from node.pipeline.weights import model_id
    from node.protocol.job import JobSpec, StageAssignment
    from node.validator.defence_client import StageDefences

    key = received[2]
    spec = JobSpec(model_id(model_dir), tuple(PROMPT), SamplingParams(max_new_tokens=40), 3, "local",
                   (StageAssignment(key.address, 0, 3), StageAssignment(key.address, 3, 6)))
    runner, url = await serve(lambda request: web.json_response({"error": {"code": "unknown_job"}}, status=404))
    started = time.monotonic()
    try:
        assert await StageDefences(lambda worker: url, deadline_s=30)(spec, 1) is None
    finally:
        await runner.cleanup()
    assert time.monotonic() - started < 5


async def test_a_defence_is_read_to_its_end_however_it_is_chunked(received, model_dir):
    """A real defence runs to megabytes: the validator reads the whole body (one network read would not)."""
    import json

    from aiohttp import web

    from node.pipeline.weights import model_id
    from node.protocol.job import JobSpec, StageAssignment
    from node.validator.defence_client import StageDefences

    handoffs, _, key, _ = received
    spec = JobSpec(model_id(model_dir), tuple(PROMPT), SamplingParams(max_new_tokens=40), 3, "local",
                   (StageAssignment(key.address, 0, 3), StageAssignment(key.address, 3, 6)))
    document = {"job_id": spec.job_id_hex, "stage_index": 1, "handoffs": [h.to_json() for h in handoffs]}
    body = json.dumps(document).replace(", ", "," + " " * 300_000, 8).encode()  # valid JSON of about 2.4 MB

    async def inputs(request):
        response = web.StreamResponse()
        await response.prepare(request)
        for start in range(0, len(body), 50_000):
            await response.write(body[start : start + 50_000])
        return response

    runner, url = await serve(inputs)
    try:
        got = await StageDefences(lambda worker: url, deadline_s=5)(spec, 1)
    finally:
        await runner.cleanup()
    assert len(body) > 2_000_000 and [(h.rows, h.signature) for h in got] == [(h.rows, h.signature) for h in handoffs]
