"""Replay and verdict end to end, in one process: real bundles from a 3-stage group of a tiny model,
submitted over HTTP, validated from the ledger queue, judged, paid or slashed in the journal, and the
verdict recomputed from its exported evidence alone (I5)."""

import asyncio
import json

from node.cli.main import main
from node.validator.evidence import Evidence, check_evidence
from tests.validator.factory import run_job

PROMPT = [1, 5, 9, 14, 3]


async def submit_and_validate(client, node, bundle) -> dict:
    response = await client.post("/v1/bundles", data=bundle.to_json())
    assert response.status == 202, await response.text()
    job_id = (await response.json())["job_id"]
    assert await node.validate_next() == job_id
    return await (await client.get(f"/v1/jobs/{job_id}")).json()


async def journal_of(ledger, job_id):
    return [e for e in await ledger.entries(0, 1000) if e.job_id == job_id]


async def test_an_honest_job_rewards_every_stage_by_work(client, node, group, ledger):
    spec = group.spec(PROMPT, max_new_tokens=20, temperature=0.7)
    job = await submit_and_validate(client, node, run_job(group, spec))
    verdict = job["verdict"]
    assert verdict["outcome"] == "accepted" and verdict["replayed"] is True
    units = 2 * (len(PROMPT) + 20 - 1)
    assert verdict["rewards_wei"] == [str(units * 10**9)] * 3
    entries = await journal_of(ledger, job["job_id"])
    assert sorted((e.kind, e.stage, e.worker) for e in entries) == [
        ("reward", s, group.keys[s].address) for s in range(3)
    ]
    assert 'stagewise_verdicts_total{outcome="accepted",reason=""} 1.0' in node.metrics.render().decode()


async def test_a_perturbed_stage_one_is_blamed_and_only_it_is_slashed(client, node, group, ledger):
    spec = group.spec(PROMPT, max_new_tokens=12)
    job = await submit_and_validate(client, node, run_job(group, spec, perturbed_stage=1))
    verdict = job["verdict"]
    assert (verdict["outcome"], verdict["blamed_stage"], verdict["reason"]) == ("blamed", 1, "proof")
    entries = await journal_of(ledger, job["job_id"])
    slashes = [e for e in entries if e.kind == "slash"]
    assert [(e.worker, e.stage, e.evidence_hash) for e in slashes] == [
        (group.keys[1].address, 1, verdict["evidence_hash"])
    ]
    # Stage 0 proved its work and is paid; stage 2 computed on a faulty input: neither paid nor slashed.
    assert [(e.kind, e.stage) for e in entries if e.kind == "reward"] == [("reward", 0)]
    history = (await (await client.get("/v1/slashes")).json())["items"]
    assert [item["worker"] for item in history] == [group.keys[1].address]
    assert history[0]["reason"] == "proof" and history[0]["chain_status"] == "pending"


async def test_an_injected_token_blames_the_last_stage(client, node, group, ledger):
    spec = group.spec(PROMPT, max_new_tokens=12, temperature=0.9, seed=99)
    job = await submit_and_validate(client, node, run_job(group, spec, inject_token_at=4))
    verdict = job["verdict"]
    assert (verdict["blamed_stage"], verdict["reason"]) == (2, "sampling")
    entries = await journal_of(ledger, job["job_id"])
    assert [e.worker for e in entries if e.kind == "slash"] == [group.keys[2].address]
    assert sorted(e.stage for e in entries if e.kind == "reward") == [0, 1]


async def test_the_verdict_is_recomputed_from_the_evidence_alone(client, node, group, model_dir, tmp_path):
    spec = group.spec(PROMPT, max_new_tokens=10)
    job = await submit_and_validate(client, node, run_job(group, spec, perturbed_stage=1))
    document = await (await client.get(f"/v1/jobs/{job['job_id']}/evidence")).json()
    check = check_evidence(Evidence.from_dict(document), str(model_dir))
    assert check.matches and check.recomputed.blamed_stage == 1

    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(document))
    assert main(["verify-evidence", str(path), "--model-dir", str(model_dir)]) == 0
    # A stored verdict that the evidence does not imply is caught.
    forged = json.loads(json.dumps(document))
    forged["verdict"] = {**forged["verdict"], "outcome": "accepted", "blamed_stage": None, "reason": None,
                         "slash_wei": "0"}
    path.write_text(json.dumps(forged))
    assert main(["verify-evidence", str(path), "--model-dir", str(model_dir)]) == 1


async def test_evidence_cli_exports_from_the_ledger(client, node, group, model_dir, db_url, tmp_path, capsys):
    job = await submit_and_validate(client, node, run_job(group, group.spec(PROMPT, max_new_tokens=6)))
    out = tmp_path / "job.json"
    command = ["--db", db_url, "validator", "evidence", job["job_id"], "-o", str(out)]
    assert await asyncio.to_thread(main, command) == 0
    assert main(["verify-evidence", str(out), "--model-dir", str(model_dir)]) == 0
    assert "verdict reproduced: accepted" in capsys.readouterr().out


async def test_jobs_issued_together_await_their_bundles_like_jobs_issued_one_by_one(ledger, model_dir, group, worker_keys):
    """expect_many (the dispatcher's batched on_job) writes what expect writes, and leaves a known job as it is."""
    from node.validator.deadlines import sweep_once
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode
    from tests.validator.conftest import TEST_DOMAIN, make_config, stake_all

    await stake_all(ledger, worker_keys)
    node = ValidatorNode(make_config(model_dir, bundle_deadline_seconds=0.0), ledger, domain=TEST_DOMAIN,
                         models=ReplayModels([model_dir]))
    arrived, *late = [group.spec(PROMPT, max_new_tokens=6, seed=s) for s in (1, 2, 3)]
    await node.submit_bundle(run_job(group, arrived).to_json().encode())
    await node.expect_many([arrived, *late, late[0]])
    assert [(await node.job(s.job_id_hex))["status"] for s in late] == ["awaiting_bundle"] * 2
    assert (await node.job(arrived.job_id_hex))["status"] != "awaiting_bundle"  # its bundle came: untouched
    assert sorted(await sweep_once(node)) == sorted(s.job_id_hex for s in late)


async def test_an_issued_job_without_a_bundle_by_its_deadline_is_soft_invalidated(ledger, model_dir, group, worker_keys):
    from node.validator.deadlines import sweep_once
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode
    from tests.validator.conftest import TEST_DOMAIN, make_config, stake_all

    await stake_all(ledger, worker_keys)
    node = ValidatorNode(make_config(model_dir, bundle_deadline_seconds=0.0), ledger, domain=TEST_DOMAIN,
                         models=ReplayModels([model_dir]))
    late = group.spec(PROMPT, max_new_tokens=6, seed=1)
    on_time = group.spec(PROMPT, max_new_tokens=6, seed=2)
    assert await node.expect(late) and await node.expect(on_time)
    assert not await node.expect(late)  # issued once
    assert (await node.job(late.job_id_hex))["status"] == "awaiting_bundle"
    await node.submit_bundle(run_job(group, on_time).to_json().encode())  # arrives: an ordinary queued job

    assert await sweep_once(node) == [late.job_id_hex]
    assert await sweep_once(node) == []
    job = await node.job(late.job_id_hex)
    assert job["status"] == "done" and job["verdict"]["outcome"] == "soft_invalidated"
    entries = await journal_of(ledger, late.job_id_hex)
    assert [e.kind for e in entries] == ["soft_invalidation"]  # nobody paid, nobody slashed
    assert await node.validate_next() == on_time.job_id_hex
    assert (await node.job(on_time.job_id_hex))["verdict"]["outcome"] == "accepted"


def handoff_evidence(group, spec, *, signer, sent_scale: float = 1.0, proof: bytes | None = None):
    """Stage 1's evidence about stage 0's prefill chunk: the bytes stage 0 sent (its honest output times
    `sent_scale`), signed by `signer` with `proof` (default: the honest proof of the honest output)."""
    import torch

    from node.pipeline.weights import load_stage
    from node.pipeline.wire import wire_bytes
    from node.protocol.complaints import Complaint
    from node.protocol.handoff import HandoffClaim, rows_digest
    from node.toploc.activation import build_proofs

    stage0 = load_stage(group.model_dir, 0, spec.stages[0].layer_end)
    with torch.inference_mode():
        honest = stage0(torch.tensor(PROMPT), [stage0.new_cache()])
    data = wire_bytes(honest * sent_scale, "fp32")
    claim = HandoffClaim(spec.job_id, 0, 0, 0, len(PROMPT), "fp32", rows_digest(data),
                         build_proofs(honest, None)[0] if proof is None else proof)
    return Complaint(1, claim, claim.sign(signer), data)


async def judge_complaint(client, node, group, spec, evidence):
    from node.protocol.bundle import Bundle

    return await submit_and_validate(client, node, Bundle(spec, (), (), (evidence.signed(group.keys[1], group.domain),)))


async def test_a_false_complaint_against_an_honest_sender_slashes_the_complainer_not_the_sender(client, node, group, ledger, tmp_path):
    """The attack (PROTOCOL I2): stage 1 keeps the bytes and the genuine proof its honest predecessor signed
    and complains anyway. Before the evidence was judged, the sender was slashed on every such job."""
    spec = (group.spec(PROMPT, max_new_tokens=8, seed=11))
    job = await judge_complaint(client, node, group, spec, handoff_evidence(group, spec, signer=group.keys[0]))
    verdict = job["verdict"]
    assert (verdict["outcome"], verdict["blamed_stage"], verdict["reason"]) == ("blamed", 1, "false_complaint")
    entries = await journal_of(ledger, job["job_id"])
    assert [(e.kind, e.worker) for e in entries] == [("slash", group.keys[1].address)]  # nobody paid either
    assert await recomputed_without_a_model(client, job["job_id"], tmp_path)


async def test_a_complaint_whose_claim_the_sender_never_signed_costs_the_complainer(client, node, group, ledger, tmp_path):
    spec = (group.spec(PROMPT, max_new_tokens=8, seed=12))
    invented = handoff_evidence(group, spec, signer=group.keys[1], proof=bytes(258))  # made up and self-signed
    job = await judge_complaint(client, node, group, spec, invented)
    assert (job["verdict"]["blamed_stage"], job["verdict"]["reason"]) == (1, "false_complaint")
    assert [e.worker for e in await journal_of(ledger, job["job_id"])] == [group.keys[1].address]
    assert await recomputed_without_a_model(client, job["job_id"], tmp_path)


async def test_a_sender_that_signs_bytes_other_than_it_proves_is_slashed_on_the_evidence(client, node, group, ledger, tmp_path):
    spec = (group.spec(PROMPT, max_new_tokens=8, seed=13))
    lying = handoff_evidence(group, spec, signer=group.keys[0], sent_scale=1.25)  # honest proof, other bytes
    job = await judge_complaint(client, node, group, spec, lying)
    verdict = job["verdict"]
    assert (verdict["outcome"], verdict["blamed_stage"], verdict["reason"]) == ("blamed", 0, "complaint")
    entries = await journal_of(ledger, job["job_id"])
    assert [(e.kind, e.worker) for e in entries] == [("slash", group.keys[0].address)]
    assert await recomputed_without_a_model(client, job["job_id"], tmp_path)


async def test_a_complaint_needs_a_staked_complainer_and_carries_no_more_than_it_may(client, node, group, ledger):
    from node.protocol.bundle import Bundle

    spec = (group.spec(PROMPT, max_new_tokens=8, seed=14))
    signed = handoff_evidence(group, spec, signer=group.keys[0]).signed(group.keys[1], group.domain)
    twice = Bundle(spec, (), (), (signed, signed)).to_json()
    response = await client.post("/v1/bundles", data=twice)
    assert response.status == 400 and "at most one" in (await response.json())["error"]["message"]
    await ledger.set_stake(group.keys[1].address, 0)  # stage 1 withdrew everything: it has nothing left to lose
    response = await client.post("/v1/bundles", data=Bundle(spec, (), (), (signed,)).to_json())
    body = await response.json()
    assert response.status == 403 and body["error"]["code"] == "unstaked_signer", body
    assert "complainer" in body["error"]["message"]


async def recomputed_without_a_model(client, job_id, tmp_path) -> bool:
    """`stagewise verify-evidence FILE` with no model: a complaint is judged by its evidence alone (I5)."""
    document = await (await client.get(f"/v1/jobs/{job_id}/evidence")).json()
    path = tmp_path / f"{job_id}.json"
    path.write_text(json.dumps(document))
    reproduced = main(["verify-evidence", str(path)]) == 0
    forged = json.loads(json.dumps(document))
    forged["verdict"] = {**forged["verdict"], "blamed_stage": 1 - forged["verdict"]["blamed_stage"]}
    path.write_text(json.dumps(forged))
    return reproduced and main(["verify-evidence", str(path)]) == 1


def quietly_altered_job(group, eps: float = 4e-3, quantile: float = 0.25, new_tokens: int = 40):
    """Stage 0 scales the smallest quarter of every row it sends by 1 + eps: its proofs stay byte for byte
    the honest ones, stage 1 (honest) still passes its own, and stage 2 (honest) fails the replay. Returns
    the bundle and what stages 1 and 2 really received, as the defences their workers would hand in."""
    import torch

    from node.pipeline.model import replay, replay_from
    from node.pipeline.weights import load_stage
    from node.pipeline.wire import wire_bytes
    from node.protocol.bundle import Bundle, SignedStage
    from node.protocol.handoff import HandoffClaim, ReceivedHandoff, rows_digest
    from node.protocol.receipts import expected_receipt, sign_receipt
    from node.toploc.activation import build_proofs
    from node.validator.defence import expected_spans

    prompt = [1, 5, 9, 14, 3, 77, 12, 200, 31, 8, 99, 41]
    spec = group.spec(prompt, max_new_tokens=new_tokens, seed=21)
    model, ends = load_stage(group.model_dir), [s.layer_end for s in spec.stages]

    def alter(rows):
        small = rows.abs() < rows.abs().quantile(quantile, dim=1, keepdim=True)
        return torch.where(small, rows * (1 + eps), rows)

    output: list[int] = []
    with torch.inference_mode():
        while len(output) < new_tokens:  # greedy, as the group really computed it
            hidden, _ = replay(model, prompt + output, ends)
            _, logits = replay_from(model, alter(hidden[0]), ends[0], ends[1:], logits_from=len(prompt + output) - 1)
            output.append(int(logits[-1].argmax()))
        hidden, _ = replay(model, prompt + output[:-1], ends)
        later, _ = replay_from(model, alter(hidden[0]), ends[0], ends[1:])
    p = len(prompt)
    sent = [hidden[0], *later]  # stage 0 proves its honest rows: the proof of the altered ones is the same
    proofs = [tuple(build_proofs(rows[:p], rows[p:])) for rows in sent]
    assert proofs[0] == tuple(build_proofs(alter(hidden[0])[:p], alter(hidden[0])[p:]))
    stages = []
    for index, key in enumerate(group.keys):
        receipt = expected_receipt(spec, index, output, proofs[index], received_proofs=proofs[index - 1] if index else ())
        stages.append(SignedStage(receipt, sign_receipt(key, receipt, group.domain), proofs[index]))
    received = {1: alter(hidden[0]), 2: later[0]}
    defences = {}
    for stage, rows in received.items():
        handed = []
        for chunk, (start, count) in enumerate(expected_spans(p, rows.shape[0])):
            data = wire_bytes(rows[start : start + count], "fp32")
            claim = HandoffClaim(spec.job_id, stage - 1, chunk, start, count, "fp32", rows_digest(data), proofs[stage - 1][chunk])
            handed.append(ReceivedHandoff(claim, claim.sign(group.keys[stage - 1]), data).to_json())
        defences[stage] = {"job_id": spec.job_id_hex, "stage_index": stage, "handoffs": handed}
    return Bundle(spec, tuple(stages), tuple(output)), defences


async def test_an_alteration_that_surfaces_two_stages_later_never_convicts_the_honest_middle_stage(client, node, group, ledger, model_dir, tmp_path):
    """Stage 2 fails and defends itself; its inputs differ from what stage 1 sends from *honest* inputs by
    9.6e-4, over the tolerance, but stage 1 computed honestly on what it got. Before defences were traced
    back, stage 1 was slashed for altered_handoff and stage 0 paid. Now the validator asks stage 1 in turn:
    its inputs are 3.1e-4 from stage 0's honest rows, under the tolerance (the detection floor), and from
    them stages 1 and 2 computed what they sent. Nobody is provably at fault: the job is accepted."""
    from aiohttp import web

    from node.validator.defence_client import StageDefences

    bundle, defences = quietly_altered_job(group)
    asked = []

    async def inputs(request):
        stage = next(s for s, d in defences.items() if request.url.port == ports[s])
        asked.append(stage)
        return web.json_response(defences[stage])

    runners, ports = {}, {}
    for stage in defences:
        app = web.Application()
        app.router.add_get("/v1/jobs/{job_id}/inputs", inputs)
        runners[stage] = web.AppRunner(app)
        await runners[stage].setup()
        site = web.TCPSite(runners[stage], "127.0.0.1", 0)
        await site.start()
        ports[stage] = site._server.sockets[0].getsockname()[1]
    urls = {group.keys[s].address: f"http://127.0.0.1:{port}" for s, port in ports.items()}
    node.defence_source = StageDefences(urls.get, deadline_s=10)
    try:
        job = await submit_and_validate(client, node, bundle)
    finally:
        for runner in runners.values():
            await runner.cleanup()
    verdict = job["verdict"]
    assert (verdict["outcome"], verdict["blamed_stage"]) == ("accepted", None), verdict
    assert asked == [2, 1]
    assert not [e for e in await journal_of(ledger, job["job_id"]) if e.kind == "slash"]
    document = await (await client.get(f"/v1/jobs/{job['job_id']}/evidence")).json()
    assert set(document["defences"]) == {"1", "2"}
    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(document))
    assert main(["verify-evidence", str(path), "--model-dir", str(model_dir)]) == 0  # the defences are evidence
