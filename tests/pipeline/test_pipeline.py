"""A 3-stage pipeline over loopback computes what one process computes, and proves it as it goes."""

from __future__ import annotations

import asyncio

import pytest

from node.pipeline.layer_split import split_layers
from node.pipeline.local import LocalPipeline, balanced_bounds
from node.pipeline.model import replay
from node.pipeline.one_process import generate_whole
from node.pipeline.weights import load_stage
from node.protocol.job import SamplingParams
from node.protocol.receipts import expected_receipt
from node.toploc.activation import split_replay, verify_proofs
from node.validator.handoff_faults import judge_evidence

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=40)
SAMPLED = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, max_new_tokens=40)


def prompts(count: int) -> list[list[int]]:
    return [[1, 5 + i, 17, 99 - i, 3][: 2 + i % 4] + [7 * i % 250] for i in range(count)]


def test_stages_of_equal_speed_split_layers_evenly_when_the_head_costs_nothing():
    assert split_layers(30, [1.0] * 3, [30] * 3) == ((0, 10), (10, 20), (20, 30))
    assert split_layers(7, [1.0] * 3, [7] * 3) == ((0, 3), (3, 5), (5, 7))
    with pytest.raises(ValueError):
        split_layers(2, [1.0] * 3, [2] * 3)


def test_the_local_pipeline_gives_the_last_stage_fewer_layers_for_the_lm_head():
    from node.pipeline.model import ModelConfig
    from node.pipeline.smollm2 import smollm2_dir

    smollm2 = ModelConfig.from_dir(smollm2_dir())
    assert round(smollm2.head_layers, 1) == 8.0  # 49152 x 576 against one layer's projections
    assert balanced_bounds(smollm2, 3) == ((0, 13), (13, 26), (26, 30))


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
async def test_one_sequence_equals_one_process(llama_dir, sampling):
    async with LocalPipeline(llama_dir, 3) as pipe:
        spec = pipe.spec([1, 42, 7, 99, 3], sampling, seed=11)
        streamed: list[int] = []
        output = await pipe.run(spec, on_tokens=streamed.extend)
    assert output == generate_whole(load_stage(llama_dir), [spec])[0]
    assert list(output) == streamed and len(output) == sampling.max_new_tokens


@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
async def test_six_interleaved_sequences_equal_one_process_and_their_proofs_verify(qwen2_dir, sampling):
    async with LocalPipeline(qwen2_dir, 3, wire_dtype="fp32") as pipe:
        specs = []
        for i, prompt in enumerate(prompts(6)):
            budget = SamplingParams(**{**sampling.__dict__, "max_new_tokens": 14 + 6 * i, "stop_ids": (2,)})
            specs.append(pipe.spec(prompt, budget, seed=100 + i))

        async def staggered(i, spec):
            await asyncio.sleep(0.01 * i)  # sequences join while others are mid-way
            return await pipe.run(spec)

        outputs = await asyncio.gather(*[staggered(i, spec) for i, spec in enumerate(specs)])
        results = {spec.job_id_hex: await pipe.stage_results(spec.job_id_hex) for spec in specs}
        boundaries = [s.layer_end for s in pipe.assignment.stages]
    whole = load_stage(qwen2_dir)
    assert list(outputs) == generate_whole(whole, specs)
    for spec, output in zip(specs, outputs):
        hidden, _ = replay(whole, list(spec.prompt_token_ids) + list(output[:-1]), boundaries)
        for index, result in enumerate(results[spec.job_id_hex]):
            assert result.stage_index == index and result.output_token_ids == output
            assert result.token_count == len(spec.prompt_token_ids) + len(output) - 1
            prefill, decode = split_replay(hidden[index], len(spec.prompt_token_ids))
            check = verify_proofs(prefill, decode, list(result.proofs))
            assert check.ok, check.reason
            received = [h.claim.proof for h in result.handoffs]
            assert received == (list(results[spec.job_id_hex][index - 1].proofs) if index else [])  # handed over, proof by proof
            expected_receipt(spec, index, output, result.proofs, received_proofs=received)  # the worker can sign exactly this
        first, last = results[spec.job_id_hex][0], results[spec.job_id_hex][-1]
        assert first.consumed_token_ids == spec.prompt_token_ids and last.produced_token_ids == output


async def test_a_single_stage_group_runs_alone(llama_dir):
    async with LocalPipeline(llama_dir, 1) as pipe:
        spec = pipe.spec([1, 2, 3], SAMPLED, seed=5)
        output = await pipe.run(spec)
        (result,) = await pipe.stage_results(spec.job_id_hex)
    assert output == generate_whole(load_stage(llama_dir), [spec])[0]
    assert len(result.proofs) == 1 + -(-(len(output) - 1) // 32)


async def test_half_precision_on_the_wire_still_proves_what_was_received(llama_dir):
    async with LocalPipeline(llama_dir, 3, wire_dtype="bf16") as pipe:
        spec = pipe.spec([1, 9, 8, 7], GREEDY, seed=1)
        output = await pipe.run(spec)
        results = await pipe.stage_results(spec.job_id_hex)
        stats = await pipe.stats()
    hidden, _ = replay(load_stage(llama_dir), [1, 9, 8, 7] + list(output[:-1]), [2, 4, 6])
    prefill, decode = split_replay(hidden[0], 4)
    assert verify_proofs(prefill, decode, list(results[0].proofs)).ok
    rows = 4 + len(output) - 1
    assert stats[1]["bytes_received"] < rows * 64 * 4  # bf16 rows: half of fp32, plus headers and proofs


async def test_a_stage_that_alters_what_it_sends_is_caught_and_only_that_sequence_fails(llama_dir):
    victim: dict[str, str] = {}

    def alter(job_id, stage_index, start, rows):
        if job_id == victim.get("job") and start == 10:
            return rows + 0.25  # the proof was built on the honest rows
        return rows

    evidence = []
    async with LocalPipeline(llama_dir, 3, stage_options={1: {"tamper": alter}, 2: {"on_complaint": evidence.append}}) as pipe:
        specs = [pipe.spec(prompt, GREEDY, seed=i) for i, prompt in enumerate(prompts(4))]
        victim["job"] = specs[1].job_id_hex
        outcomes = await asyncio.gather(*[pipe.run(spec) for spec in specs], return_exceptions=True)
        status = await pipe.clients[0].status(specs[1].job_id_hex)
        for server in pipe.servers:  # every stage is still up and serving
            assert server.in_flight() == 0
        again = await pipe.run(pipe.spec([1, 2, 3], GREEDY, seed=3))
    assert isinstance(outcomes[1], Exception) and "do not match its signed proof" in str(outcomes[1])
    complaint = status["complaint"]
    assert complaint == {"complainer_stage": 2, "sender_stage": 1, "chunk_index": 1}
    (held,) = evidence  # the complaining stage holds the sender-signed bytes: they convict the sender alone
    assert held.claim.job_id == specs[1].job_id and (held.claim.start, held.claim.count) == (4, 32)
    assert judge_evidence(held, pipe.keys[1].address) and not judge_evidence(held, pipe.keys[0].address)
    whole = load_stage(llama_dir)
    honest = [s for i, s in enumerate(specs) if i != 1]
    assert [o for i, o in enumerate(outcomes) if i != 1] == generate_whole(whole, honest)
    assert len(again) == GREEDY.max_new_tokens


async def test_the_shortest_jobs_end_cleanly(llama_dir):
    async with LocalPipeline(llama_dir, 3) as pipe:
        specs = [pipe.spec([9], SamplingParams(max_new_tokens=n), seed=n) for n in (1, 2, 33)]
        outputs = await asyncio.gather(*[pipe.run(spec) for spec in specs])
        results = [await pipe.stage_results(spec.job_id_hex) for spec in specs]
    assert [len(o) for o in outputs] == [1, 2, 33]
    assert list(outputs) == generate_whole(load_stage(llama_dir), specs)
    for output, stage_results in zip(outputs, results):
        for result in stage_results:
            assert len(result.proofs) == 1 + -(-(len(output) - 1) // 32) and result.token_count == len(output)
