"""Replay and verdict end to end, in one process: real bundles from a 3-stage group of a tiny model,
submitted over HTTP, validated from the ledger queue, judged, paid or slashed in the journal, and the
verdict recomputed from its exported evidence alone (I5)."""

import asyncio
import json


from node.cli import main
from node.evidence import Evidence, check_evidence
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


async def test_an_issued_job_without_a_bundle_by_its_deadline_is_soft_invalidated(ledger, model_dir, group, worker_keys):
    from node.validator.deadlines import sweep_once
    from node.validator.models import ReplayModels
    from node.validator.node import ValidatorNode
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


async def test_a_signed_handoff_complaint_blames_the_sender_it_names(client, node, group, ledger):
    """Stage 1 rebuilt stage 0's prefill proof from the bytes it received and they differ (I2): stage 0 is
    blamed on the complaint, nobody is paid, and stage 1 (which stopped) is not slashed."""
    import torch

    from node.bundle import Bundle, SignedStage, sign_complaint
    from node.pipeline.handoff import sign_proof
    from node.pipeline.weights import load_stage
    from node.receipts import expected_receipt, sign_receipt
    from node.toploc.activation import build_proofs

    spec = group.spec(PROMPT, max_new_tokens=8)
    stage0 = load_stage(group.model_dir, 0, 2)
    with torch.inference_mode():
        prefill = stage0(torch.tensor(PROMPT), [stage0.new_cache()])
    proofs = tuple(build_proofs(prefill, None))
    receipt = expected_receipt(spec, 0, [], proofs)
    signed = SignedStage(receipt, sign_receipt(group.keys[0], receipt, group.domain), proofs)
    def complaint(sender_key):
        return sign_complaint(
            group.keys[1], group.domain, job_id=spec.job_id, complainer_stage=1, chunk_index=0,
            claimed_proof=proofs[0], rebuilt_proof=bytes(258),
            sender_signature=sign_proof(sender_key, spec.job_id, 0, 0, proofs[0]),
        )

    # A complaint must carry the sender's own signature over the proof it claimed.
    forged = Bundle(spec, (signed,), (), (complaint(group.keys[2]),))
    response = await client.post("/v1/bundles", data=forged.to_json())
    assert response.status == 403 and (await response.json())["error"]["code"] == "bad_complaint"
    job = await submit_and_validate(client, node, Bundle(spec, (signed,), (), (complaint(group.keys[0]),)))
    verdict = job["verdict"]
    assert (verdict["outcome"], verdict["blamed_stage"], verdict["reason"]) == ("blamed", 0, "complaint")
    entries = await journal_of(ledger, job["job_id"])
    assert [(e.kind, e.worker) for e in entries] == [("slash", group.keys[0].address)]
