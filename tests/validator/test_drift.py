"""The cross-job test (PROTOCOL I8): a subtle cheat whose every chunk and every job pass is caught by its worker's
running figures over many jobs, blamed on the stage that drifts, and the worker is kept out of the groups.

Figures are real: tiny Llama in bf16, three stages, two sequences a batch (each judged as a job), the verdict's
whole-job figures of every stage. The cheater loads fp8 (e4m3) weights on stage 1; its drift reaches stage 2,
whose worker is honest. Both live in the same ledger a validator keeps (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch

from node.protocol.job import JobSpec, SamplingParams, StageAssignment
from node.protocol.signing import SigningKey
from node.toploc.job_statistics import BF16_SEQUENTIAL
from tests.validator.factory import pipeline_bundle

MODEL_ID = "0x" + "ab" * 32


def _address(name: str) -> str:
    from ledger.merkle import keccak

    return SigningKey(keccak(name.encode())).address


def _real_figures(setup_name: str, batches: int) -> list[list[dict]]:
    """Each sequence's per-stage verdict figures ({"job": {"figures": ...}}), as the replay records them."""
    from node.pipeline.calibration import Job, attack_setups, check_rows, honest_setups
    from node.pipeline.tiny import tiny_model_dir
    from node.toploc.job_statistics import stage_job_check
    from node.toploc.thresholds import BF16_ACTIVATION, JOB_THRESHOLDS

    torch.set_num_threads(1)
    model_dir = tiny_model_dir("llama", 0, Path("/tmp") / "stagewise-test-drift-llama")
    setup = next(s for s in honest_setups(torch.bfloat16) + attack_setups(3, torch.bfloat16) if s.name == setup_name)
    setup = dataclasses.replace(setup, batch=2)
    found = []
    for j in range(batches):
        job = Job(prompt=tuple(range(3 + j, 15 + j)), new_tokens=330,
                  params=SamplingParams(temperature=0.8, top_k=50, top_p=0.95), seed=90 + j)
        for row in check_rows("tiny llama", model_dir, [(0, 2), (2, 4), (4, 6)], job, setup, dtype=torch.bfloat16,
                              every_sequence=True):
            assert row.blamed is None  # every chunk and the whole job pass: only the running test can tell
            per_stage = []
            for stage in row.stages:
                checked = [_Checked((0, 32), chunk) for chunk in stage.every_chunk[1:]]  # decode chunks: full
                job_check = stage_job_check(checked, JOB_THRESHOLDS["bf16"], BF16_ACTIVATION.short_rows)
                per_stage.append({"job": {"figures": dataclasses.asdict(job_check.figures)}})
            found.append(per_stage)
    return found


@dataclasses.dataclass(frozen=True)
class _Checked:
    rows: tuple[int, int]
    figures: object


def _spec(workers: list[str], seed: int) -> JobSpec:
    return JobSpec(model_id=MODEL_ID, prompt_token_ids=(1, 2, 3), seed=seed, group_id="g", precision="bf16",
                   sampling=SamplingParams(temperature=0.8, max_new_tokens=330),
                   stages=tuple(StageAssignment(w, 2 * i, 2 * i + 2) for i, w in enumerate(workers)))


@pytest.fixture(scope="module")
def fp8_figures():
    return _real_figures("stage 1 fp8 e4m3 weights", batches=1)


@pytest.fixture(scope="module")
def drifting_honest_figures():
    return _real_figures("GPU kernels: split-K x4 in the declared dtype + flash + low-precision norms", batches=1)


AUDITED = {"1": {"valid": True}}  # the handoff audit replayed stage 1 from the rows it received (a bf16 job)


async def _run_jobs(ledger, workers, figures, jobs, first_seed=0, defences=AUDITED):
    from node.validator.drift import add_to_running_tests

    flags = []
    for n in range(jobs):
        spec = _spec(workers, first_seed + n)
        async with ledger.transaction() as tx:
            flag = await add_to_running_tests(tx.conn, spec, spec.job_id_hex,
                                              {"stages": figures[n % len(figures)], "defences": defences},
                                              int(time.time() * 1000))
        if flag is not None:
            flags.append((n + 1, flag))
    return flags


@pytest.mark.slow
async def test_an_fp8_weight_stage_is_flagged_across_jobs_and_its_honest_neighbours_are_not(ledger, fp8_figures,
                                                                                          drifting_honest_figures):
    """Attack: stage 1 computes with fp8 weights, which no single bf16 job can tell from honest drift (every chunk
    and every job pass). Across its jobs the running test flags it, and only it: stage 2's worker carries the
    same drift (the replay starts from the tokens) and is never blamed. A group of honest workers with the most
    drifting emulated GPU kernels runs as many jobs unflagged."""
    from node.orchestration.bans import ledger_bans

    workers = [_address(f"drift-{i}") for i in range(3)]
    stage_means = [[s["job"]["figures"]["mant_err_mean"] for s in job] for job in fp8_figures]
    assert all(job[1] > 2.6 for job in stage_means) and all(job[2] > 2.4 for job in stage_means), stage_means
    flags = await _run_jobs(ledger, workers, fp8_figures, jobs=60)
    assert flags, "the fp8 stage was never flagged"
    jobs_needed, flag = flags[0]
    assert (flag.worker, flag.stage) == (workers[1], 1)
    assert all(f.worker == workers[1] for _, f in flags)
    assert jobs_needed <= 3 * BF16_SEQUENTIAL.chunks_needed() / 10  # ~10 full chunks a job
    stored = await ledger.drift_flags(worker=workers[1])
    assert stored and stored[0].stage == 1 and stored[0].precision == "bf16"
    bans = ledger_bans(ledger)
    assert (await bans(workers[1])) > time.time() + 3600
    assert await bans(workers[2]) is None and await bans(workers[0]) is None

    honest = [_address(f"honest-{i}") for i in range(3)]
    assert await _run_jobs(ledger, honest, drifting_honest_figures, jobs=300, first_seed=1000) == []


async def test_figures_a_stage_inherited_never_count_and_its_own_rows_clear_it(ledger):
    """Attack on an honest neighbour: SmolLM2 doubles stage 1's drift by stage 2, so a cheat whose own figures look
    honest can lift the honest stage 2's figures from the tokens to a cheat's level, job after job. Those figures
    lean stage 2's test towards a cheat, so the validator asks it for its rows (`stages_to_ask`); figures from the
    tokens never count, and replayed from its own rows stage 2 reads honest. A stage that withholds its rows is judged
    on the figures the validator has, and flagged on them."""
    from node.validator.drift import add_to_running_tests, stages_to_ask

    workers = [_address(f"amplified-{i}") for i in range(3)]
    from_tokens = [JobFiguresDict(0.2), JobFiguresDict(1.2), JobFiguresDict(3.4)]
    own_rows = [JobFiguresDict(0.2), JobFiguresDict(1.2), JobFiguresDict(1.0)]
    outcomes = []
    for n in range(40):
        spec = _spec(workers, 5000 + n)
        async with ledger.reading() as conn:
            assert await stages_to_ask(conn, spec, {"stages": from_tokens, "defences": AUDITED}) == [2]
        handed = {"stages": own_rows, "defences": {**AUDITED, "2": {"valid": True}}}
        not_asked = {"stages": from_tokens, "defences": AUDITED}
        async with ledger.transaction() as tx:
            outcomes.append(await add_to_running_tests(tx.conn, spec, spec.job_id_hex, handed if n % 2 else not_asked, n))
    assert outcomes == [None] * 40

    withheld = {"stages": from_tokens, "defences": AUDITED, "rows_withheld": [2]}
    flags = []
    for n in range(40):
        spec = _spec(workers, 6000 + n)
        async with ledger.transaction() as tx:
            flags.append(await add_to_running_tests(tx.conn, spec, spec.job_id_hex, withheld, n))
    assert any(f is not None and (f.worker, f.stage) == (workers[2], 2) for f in flags)


def JobFiguresDict(mean: float, chunks: int = 10) -> dict:
    return {"job": {"figures": {"chunks": chunks, "mant_err_mean": mean, "exp_rate": 0.0}}}


async def test_a_job_adds_to_the_running_tests_once_and_fp32_jobs_not_at_all(ledger):
    """A replayed job must not count twice (a validator restarted mid-commit, a second process on the ledger):
    the running state moves in the verdict's transaction, and a job flags at most once."""
    from ledger import drift
    from node.validator.drift import add_to_running_tests

    workers = [_address(f"once-{i}") for i in range(2)]
    high = {"job": {"figures": {"chunks": 10, "mant_err_mean": 2.9, "exp_rate": 0.0}}}
    low = {"job": {"figures": {"chunks": 10, "mant_err_mean": 0.1, "exp_rate": 0.0}}}
    spec = _spec(workers, 1)
    async with ledger.transaction() as tx:
        assert await add_to_running_tests(tx.conn, spec, spec.job_id_hex, {"stages": [high, low]}, 1) is None
    async with ledger.reading() as conn:
        first = await drift.running_tests(conn, MODEL_ID, "bf16", workers)
    assert first[workers[0]].jobs == 1 and first[workers[0]].log_ratio > 0
    assert first[workers[1]] == drift.RunningTest()  # cleared: the test restarts from zero

    fp32 = dataclasses.replace(spec, precision="fp32")
    async with ledger.transaction() as tx:
        assert await add_to_running_tests(tx.conn, fp32, fp32.job_id_hex, {"stages": [high, low]}, 2) is None
    async with ledger.reading() as conn:
        assert await drift.running_tests(conn, MODEL_ID, "bf16", workers) == first

    flag = drift.Flag(spec.job_id_hex, workers[0], MODEL_ID, "bf16", 0, 9.5, 8, 3)
    async with ledger.transaction() as tx:
        assert await drift.record_flag(tx.conn, flag)
        assert not await drift.record_flag(tx.conn, dataclasses.replace(flag, worker=workers[1]))
    assert [f.worker for f in await ledger.drift_flags()] == [workers[0]]
    assert await ledger.latest_drift_flag_ms([workers[0], workers[1]]) == {workers[0]: 3}


@pytest.mark.slow
async def test_a_validator_that_flags_a_worker_evicts_it_and_lists_the_flag(ledger, model_dir, monkeypatch):
    """Through the validator: a bf16 pipeline job accepted and committed adds to its workers' running tests; when
    a test decides, the worker is evicted from its group (the orchestrator's hook) and `GET /v1/workers` lists the
    flag. The test here is made to decide on one real job (a cheat level below honest drift) to see the wiring; the
    workers of stages 0 and 1 come with long honest histories, so stage 2 is the one that crosses, and the validator
    asks it for its rows before it is flagged."""
    from aiohttp.test_utils import TestClient, TestServer

    from node.pipeline.local import LocalPipeline
    from node.toploc import job_statistics
    from node.validator.app import build_app
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode
    from tests.validator.conftest import TEST_DOMAIN, make_config, stake_all

    torch.set_num_threads(1)
    kept = []
    async with LocalPipeline(model_dir, 3, precision="bf16",
                             stage_options={1: {"on_result": kept.append}, 2: {"on_result": kept.append}}) as pipe:
        spec = pipe.spec([3, 1, 4, 1, 5, 9, 2, 6], SamplingParams(temperature=0.8, top_k=50, max_new_tokens=40), seed=5)
        output = await pipe.run(spec)
        results = await pipe.stage_results(spec.job_id_hex)
        keys = list(pipe.keys)
    bundle = pipeline_bundle(spec, output, results, keys, TEST_DOMAIN)
    await stake_all(ledger, keys)
    hair_trigger = job_statistics.SequentialTest(honest_mean=1e-4, cheat_mean=1e-3, chunk_sd=1e-3, alpha=0.4, beta=0.4)
    monkeypatch.setitem(job_statistics.SEQUENTIAL_TESTS, "bf16", hair_trigger)
    node = ValidatorNode(make_config(model_dir), ledger, domain=TEST_DOMAIN,
                         models=ReplayModels([model_dir], precision="bf16"))
    evicted, asked = [], []

    async def hook(worker, reason):
        evicted.append((worker, reason))

    async def received_rows(spec, stage, limit, deadline_s=None):
        asked.append(stage)
        return next((tuple(r.handoffs) for r in kept if r.job_id == spec.job_id_hex and r.stage_index == stage), None)

    node.on_blamed.append(hook)
    node.defence_source = received_rows
    from ledger import drift

    async with ledger.transaction() as tx:  # stages 0 and 1 have long honest histories: only stage 2 crosses
        await drift.save_running_tests(tx.conn, spec.model_id, "bf16", {
            keys[0].address: drift.RunningTest(-1e6, 50), keys[1].address: drift.RunningTest(-1e6, 50)})
    client = TestClient(TestServer(build_app(node)))
    await client.start_server()
    try:
        assert (await client.post("/v1/bundles", data=bundle.to_json())).status == 202
        assert await node.validate_next() == spec.job_id_hex
        job = await (await client.get(f"/v1/jobs/{spec.job_id_hex}")).json()
        assert job["verdict"]["outcome"] == "accepted", job  # the job itself is paid
        # stage 1's rows for the handoff audit; stage 2's because its test would cross on figures replayed from the
        # tokens: replayed from its own rows it crosses still, and only then is it flagged
        assert asked == [1, 2]
        assert evicted == [(keys[2].address, "drift")]
        worker = await (await client.get(f"/v1/workers/{keys[2].address}")).json()
        assert [(f["job_id"], f["stage"]) for f in worker["drift_flags"]] == [(spec.job_id_hex, 2)]
    finally:
        await client.close()
