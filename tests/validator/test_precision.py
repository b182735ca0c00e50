"""Declared precision (PROTOCOL I8) on a tiny Llama: stage servers that compute their layers in a precision, a
validator that replays in the job's declared one and judges with its thresholds, and the bundles it refuses."""

import asyncio
import dataclasses

import pytest
import torch

from node.protocol.job import SamplingParams
from node.validator.verdict import Outcome, Reason, Tariff, decide
from tests.validator.conftest import TEST_DOMAIN
from tests.validator.factory import pipeline_bundle, signed_bundle

PROMPTS = ([3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8], [1, 4, 1, 4, 2, 1, 3, 5, 6], [5, 7, 7, 2, 1])


async def pipeline_jobs(model_dir, precision, *, stage_options=None, max_new_tokens=40, with_defences=False):
    """Four sequences at once through three stage servers (KV-cache decoding, rows of other sequences beside
    each one in every micro-batch): their specs, outputs, each stage's proofs and (`with_defences`) the
    sender-signed rows stages 1 and 2 received, which a stage hands in as its defence."""
    from node.pipeline.local import LocalPipeline

    torch.set_num_threads(1)
    kept = []  # the stage results as the receiving stages keep them, with the rows they received
    options = {s: dict((stage_options or {}).get(s, {})) for s in range(3)}
    for s in (1, 2):
        options[s]["on_result"] = kept.append
    async with LocalPipeline(model_dir, 3, precision=precision, stage_options=options) as pipe:
        sampling = SamplingParams(temperature=0.8, top_k=50, max_new_tokens=max_new_tokens)
        specs = [pipe.spec(prompt, sampling, seed=40 + i) for i, prompt in enumerate(PROMPTS)]
        outputs = await asyncio.gather(*(pipe.run(spec) for spec in specs))
        proofs = [[result.proofs for result in await pipe.stage_results(spec.job_id_hex)] for spec in specs]
    defences = [{r.stage_index: r.handoffs for r in kept if r.job_id == spec.job_id_hex} if with_defences else {}
                for spec in specs]
    return list(zip(specs, outputs, proofs, defences))


def replayed(model_dir, precision, jobs):
    """The verdict and figures of each job, replayed in one prefill in `precision` (with its defences)."""
    from node.pipeline.weights import load_stage
    from node.pipeline.wire import WIRE_DTYPES
    from node.validator.replay import findings_of

    model = load_stage(model_dir, dtype=WIRE_DTYPES[precision])
    with torch.inference_mode():
        reports = [findings_of(model, spec, output, proofs, defences=defences)
                   for spec, output, proofs, defences in jobs]
    return [(decide(report.findings, Tariff()), report.figures) for report in reports]


def worst(figures, name):
    return max(chunk["figures"][name] for job in figures for stage in job["stages"] for chunk in stage["chunks"]
               if chunk["figures"] is not None)


@pytest.mark.slow
async def test_honest_bf16_workers_decoding_with_a_kv_cache_pass_a_bf16_replay(model_dir):
    """The regime issue 20 is about: in bf16, KV-cache decoding in micro-batches and a one-prefill replay round
    differently (fp32 judged these workers' drift as a cheat). With bf16's thresholds they are paid."""
    jobs = await pipeline_jobs(model_dir, "bf16")
    assert all(spec.precision == "bf16" for spec, *_ in jobs)
    judged = replayed(model_dir, "bf16", jobs)
    figures = [f for _, f in judged]
    print("honest bf16 worst chunk: exp", worst(figures, "exp_mismatches"), "mean", worst(figures, "mant_err_mean"),
          "median", worst(figures, "mant_err_median"), "logit gap", max(f["sampling"]["max_gap"] for f in figures))
    assert [verdict.outcome for verdict, _ in judged] == [Outcome.ACCEPTED] * len(jobs), figures


@pytest.mark.slow
async def test_a_bf16_cheater_on_the_last_stage_is_blamed_and_its_honest_predecessors_defences_hold(model_dir):
    """Attack: the last stage loads 2:4-sparse weights in a bf16 job and, its proofs failing, hands in the rows
    it received as its defence, as does the stage before it. Honest bf16 rows differ from a one-prefill bf16
    replay by about 1e-2 relative L1 (the devnet read 0.019 on SmolLM2): judged with fp32's handoff tolerance
    (5e-4) the defences convicted the honest first stage of altering its handoff, and the cheater went free.
    With bf16's tolerance the honest rows are taken as the stages' real inputs and the cheater is blamed."""
    from node.worker.cheats import Cheat

    cheat = Cheat.parse("sparse-2-4")
    # 40 tokens: a 32-row decode chunk, judged by bf16's full-chunk bounds (a job whose chunks all have fewer than
    # 16 rows is judged by the short-chunk bounds alone, which a 2:4-sparse stage passes: docs/verification.md)
    jobs = await pipeline_jobs(model_dir, "bf16", stage_options={2: {"cheat": cheat, "on_loaded": cheat.apply}},
                               max_new_tokens=40, with_defences=True)
    for verdict, figures in replayed(model_dir, "bf16", jobs):
        assert (verdict.outcome, verdict.blamed_stage, verdict.reason) == (Outcome.BLAMED, 2, Reason.PROOF), figures
        assert verdict.rewards_wei[0] > 0 and verdict.rewards_wei[1] > 0
        assert all(d["valid"] and not d["altered"] for d in figures["defences"].values()), figures["defences"]


@pytest.mark.slow
async def test_short_bf16_jobs_pay_honest_workers_and_blame_an_int4_stage(model_dir):
    """Attack: 8 new tokens on 5- to 9-token prompts, so every chunk a stage proves is under 16 rows (a 5-9-row
    prefill, 7 decode rows). Such chunks were judged by bounds made for one-row chunks (mantissa mean <= 34), which
    an int4 stage passes (10-15): it was paid. Bounds by row count (node/toploc/thresholds.py) blame it, and the
    honest workers of the same short jobs are paid."""
    from node.worker.cheats import Cheat

    honest = replayed(model_dir, "bf16", await pipeline_jobs(model_dir, "bf16", max_new_tokens=8))
    assert [verdict.outcome for verdict, _ in honest] == [Outcome.ACCEPTED] * len(PROMPTS), [f for _, f in honest]
    assert all(stage["job"]["ok"] for _, f in honest for stage in f["stages"])  # the whole-job check is recorded
    cheat = Cheat.parse("int4:64")
    jobs = await pipeline_jobs(model_dir, "bf16", stage_options={1: {"cheat": cheat, "on_loaded": cheat.apply}},
                               max_new_tokens=8)
    for verdict, figures in replayed(model_dir, "bf16", jobs):
        assert (verdict.outcome, verdict.blamed_stage, verdict.reason) == (Outcome.BLAMED, 1, Reason.PROOF), figures
        assert verdict.rewards_wei[0] > 0


@pytest.mark.slow
async def test_a_worker_computing_in_bf16_when_the_job_declares_fp32_is_blamed(model_dir):
    """Attack: stage 1 loads its layers in bf16 (half the memory, faster kernels) and signs the fp32 job's
    receipts. The fp32 replay and fp32's thresholds blame it, and only it."""
    jobs = await pipeline_jobs(model_dir, "fp32", stage_options={1: {"dtype": torch.bfloat16}}, max_new_tokens=8)
    for verdict, figures in replayed(model_dir, "fp32", jobs):
        assert (verdict.outcome, verdict.blamed_stage, verdict.reason) == (Outcome.BLAMED, 1, Reason.PROOF), figures
        assert verdict.rewards_wei[0] > 0 and verdict.rewards_wei[2] == 0


def test_a_replay_model_in_another_precision_than_the_jobs_is_refused(group, model_dir):
    from node.pipeline.weights import load_stage
    from node.validator.replay import findings_of

    spec = dataclasses.replace(group.spec([1, 2, 3]), precision="bf16")
    bundle = signed_bundle(group, spec, [4, 5])
    with pytest.raises(ValueError, match="declared bf16 is replayed in bf16"):
        findings_of(load_stage(model_dir), spec, bundle.output_token_ids, [s.proofs for s in bundle.stages])


async def test_a_bundle_declaring_another_precision_than_the_validators_is_refused(client, group):
    """Attack: the validator declares fp32 for its model; a bundle whose spec claims bf16 (bf16's looser
    thresholds would let a cheaper computation through) is refused at intake, before any replay or write."""
    spec = dataclasses.replace(group.spec([1, 2, 3]), precision="bf16")
    response = await client.post("/v1/bundles", data=signed_bundle(group, spec, [4, 5]).to_json())
    assert response.status == 422
    assert (await response.json())["error"]["code"] == "wrong_precision"
    fp32 = await client.post("/v1/bundles", data=signed_bundle(group, group.spec([1, 2, 3]), [4, 5]).to_json())
    assert fp32.status == 202, await fp32.text()


async def test_a_bf16_validator_takes_bf16_bundles_and_refuses_fp32_ones(ledger, model_dir, group, worker_keys):
    from aiohttp.test_utils import TestClient, TestServer

    from node.validator.app import build_app
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode
    from tests.validator.conftest import make_config, stake_all

    await stake_all(ledger, worker_keys)
    node = ValidatorNode(make_config(model_dir), ledger, domain=TEST_DOMAIN,
                         models=ReplayModels([model_dir], precision="bf16"))
    client = TestClient(TestServer(build_app(node)))
    await client.start_server()
    try:
        bf16 = dataclasses.replace(group.spec([1, 2, 3]), precision="bf16")
        assert (await client.post("/v1/bundles", data=signed_bundle(group, bf16, [4, 5]).to_json())).status == 202
        refused = await client.post("/v1/bundles", data=signed_bundle(group, group.spec([1, 2, 3]), [4, 5]).to_json())
        assert refused.status == 422 and (await refused.json())["error"]["code"] == "wrong_precision"
    finally:
        await client.close()


@pytest.mark.slow
async def test_a_bf16_job_is_accepted_over_http_and_its_evidence_recomputes_in_bf16(ledger, model_dir):
    """A bf16 validator node takes the bundle of a bf16 pipeline job, replays it in bf16 and pays; anyone
    re-judging the stored evidence (`verify-evidence`) replays it in the precision the job declared."""
    from aiohttp.test_utils import TestClient, TestServer

    from node.pipeline.local import LocalPipeline
    from node.validator.app import build_app
    from node.validator.evidence import Evidence, check_evidence
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode
    from tests.validator.conftest import make_config, stake_all

    torch.set_num_threads(1)
    async with LocalPipeline(model_dir, 3, precision="bf16") as pipe:
        spec = pipe.spec(PROMPTS[0], SamplingParams(temperature=0.8, top_k=50, max_new_tokens=12), seed=5)
        output = await pipe.run(spec)
        results = await pipe.stage_results(spec.job_id_hex)
        keys = list(pipe.keys)
    bundle = pipeline_bundle(spec, output, results, keys, TEST_DOMAIN)
    assert all(stage.receipt.precision == "bf16" for stage in bundle.stages)
    await stake_all(ledger, keys)
    node = ValidatorNode(make_config(model_dir), ledger, domain=TEST_DOMAIN,
                         models=ReplayModels([model_dir], precision="bf16"))
    client = TestClient(TestServer(build_app(node)))
    await client.start_server()
    try:
        response = await client.post("/v1/bundles", data=bundle.to_json())
        assert response.status == 202, await response.text()
        assert await node.validate_next() == spec.job_id_hex
        job = await (await client.get(f"/v1/jobs/{spec.job_id_hex}")).json()
        assert job["verdict"]["outcome"] == "accepted", job
        document = await (await client.get(f"/v1/jobs/{spec.job_id_hex}/evidence")).json()
    finally:
        await client.close()
    check = check_evidence(Evidence.from_dict(document), str(model_dir))
    assert check.matches and check.recomputed.outcome is Outcome.ACCEPTED
