"""The validator API as a client sees it: intake, JSON errors for every kind of bad input, reads, admin."""

import json

from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select

from ledger.models import Job
from node.protocol.receipts import sign_receipt
from node.protocol.signing import SigningKey
from node.validator.app import build_app
from tests.validator.conftest import ADMIN_TOKEN, TEST_DOMAIN, make_config
from tests.validator.factory import signed_bundle

OUTPUT = [5, 9, 3, 7]


async def job_count(ledger) -> int:
    async with ledger.reading() as conn:
        return (await conn.execute(select(func.count()).select_from(Job))).scalar_one()


def bundle_json(group, **spec_kw) -> dict:
    return signed_bundle(group, group.spec([1, 2, 3, 4], **spec_kw), OUTPUT).to_dict()


async def assert_error(response, status: int, *codes: str) -> dict:
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    if codes:
        assert body["error"]["code"] in codes, body
    assert body["error"]["message"]
    return body


async def test_a_bundle_is_stored_before_the_answer_and_a_replay_is_refused(client, group, ledger):
    document = bundle_json(group)
    response = await client.post("/v1/bundles", json=document)
    assert response.status == 202, await response.text()
    job_id = (await response.json())["job_id"]
    assert (await ledger.job(job_id)).status == "pending"

    job = await (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "queued" and job["verdict"] is None
    assert [s["worker"] for s in job["stages"]] == [k.address for k in group.keys]

    await assert_error(await client.post("/v1/bundles", json=document), 409, "duplicate_bundle")
    assert await job_count(ledger) == 1


def _mutations(group, other_key):
    good = bundle_json(group)

    def edit(fn):
        doc = json.loads(json.dumps(good))
        fn(doc)
        return json.dumps(doc)

    def resign_stage1(doc):
        from node.protocol.bundle import Bundle

        bundle = Bundle.from_dict(doc)
        receipt = bundle.stages[1].receipt
        doc["stages"][1]["signature"] = "0x" + sign_receipt(other_key, receipt, TEST_DOMAIN).hex()

    yield "not json", "{nope", 400, ("malformed_json",)
    yield "empty body", "", 400, ("malformed_json",)
    yield "a list", "[1, 2]", 400, ("malformed_bundle",)
    yield "NaN", json.dumps(good).replace('"seed": 7', '"seed": NaN'), 400, ("malformed_json", "malformed_bundle")
    yield "unknown field", edit(lambda d: d.update(extra=1)), 400, ("malformed_bundle",)
    yield "wrong type", edit(lambda d: d.update(output_token_ids="abc")), 400, ("malformed_bundle",)
    yield "negative seed", edit(lambda d: d["spec"].update(seed=-1)), 400, ("malformed_bundle",)
    yield "unknown model", edit(lambda d: d["spec"].update(model_id="0x" + "11" * 32)), 422, ("unknown_model",)
    yield "job id not its spec", edit(lambda d: d["spec"].update(seed=8)), 422, ("receipt_mismatch",)
    yield "token outside the vocabulary", edit(lambda d: d.update(output_token_ids=[5, 9, 3, 4000])), 422, (
        "token_out_of_vocabulary",
    )
    yield "tampered output", edit(lambda d: d.update(output_token_ids=[5, 9, 3, 8])), 422, ("receipt_mismatch",)
    yield "bad signature", edit(lambda d: d["stages"][0].update(signature="0x" + "00" * 65)), 403, ("bad_signature",)
    yield "unassigned signer", edit(resign_stage1), 403, ("unassigned_signer",)


async def test_bad_input_gets_a_json_error_and_changes_nothing(client, group, ledger, node):
    other = SigningKey((0x9999).to_bytes(32, "big"))
    for name, body, status, codes in _mutations(group, other):
        response = await client.post("/v1/bundles", data=body, headers={"Content-Type": "application/json"})
        await assert_error(response, status, *codes)
    assert await job_count(ledger) == 0
    text = node.metrics.render().decode()
    assert 'stagewise_bundles_refused_total{reason="unknown_model"} 1.0' in text
    assert 'stagewise_bundles_refused_total{reason="receipt_mismatch"} 2.0' in text


async def test_an_unstaked_signer_is_refused(client, group, ledger):
    await ledger.set_stake(group.keys[2].address, 0)
    await assert_error(await client.post("/v1/bundles", json=bundle_json(group)), 403, "unstaked_signer")
    assert await job_count(ledger) == 0


async def test_an_oversized_body_gets_413(ledger, model_dir, group):
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode

    node = ValidatorNode(make_config(model_dir, max_body_bytes=2048), ledger, domain=TEST_DOMAIN,
                         models=ReplayModels([model_dir]))
    async with TestClient(TestServer(build_app(node))) as small:
        await assert_error(await small.post("/v1/bundles", data=b"x" * 5000), 413, "body_too_large")
    assert await job_count(ledger) == 0


async def test_reads_and_routes_answer_json(client):
    await assert_error(await client.get("/v1/jobs/0x" + "00" * 32), 404, "unknown_job")
    await assert_error(await client.get("/v1/jobs/123"), 400, "bad_job_id")
    await assert_error(await client.get("/v1/workers/0x" + "00" * 20), 404, "unknown_worker")
    await assert_error(await client.get("/v1/workers/0x5EC65DaAcCa3B127736b97bC1EDB9bD885Bc2Db7"), 400, "bad_address")
    await assert_error(await client.get("/v1/leaderboard?limit=0"), 400, "bad_query")
    await assert_error(await client.get("/v1/leaderboard?limit=²"), 400, "bad_query")  # a digit to str.isdigit()
    await assert_error(await client.get("/v1/nowhere"), 404, "not_found")
    await assert_error(await client.delete("/v1/bundles"), 405, "method_not_allowed")
    for path in ("/v1/slashes", "/v1/epochs", "/v1/jobs"):
        body = await (await client.get(path)).json()
        assert body["items"] == [] and body.get("total", 0) == 0  # the paged lists also say total, offset, limit
    board = (await (await client.get("/v1/leaderboard")).json())["items"]
    assert len(board) == 3 and all(row["rewards"] == "0" and row["stake"] == str(10**18) for row in board)
    health = await client.get("/health")
    assert health.status == 200 and (await health.json())["status"] == "ok"
    document = await (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.") and "/v1/bundles" in document["paths"]
    metrics = await client.get("/metrics")
    assert "stagewise_queue_depth" in await metrics.text()


async def test_admin_actions_need_the_token(client, node, group):
    await assert_error(await client.post("/v1/admin/epochs/close"), 401, "unauthorized")
    bad = {"Authorization": "Bearer wrong"}
    await assert_error(await client.post("/v1/admin/epochs/close", headers=bad), 401, "unauthorized")
    good = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    await assert_error(await client.post("/v1/admin/epochs/close", headers=good), 409, "nothing_to_close")


async def test_unreplayed_job_pays_every_stage_and_shows_on_the_leaderboard(ledger, model_dir, group, worker_keys):
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode
    from tests.validator.conftest import stake_all

    await stake_all(ledger, worker_keys)
    node = ValidatorNode(make_config(model_dir, sample_rate=0.0), ledger, domain=TEST_DOMAIN,
                         models=ReplayModels([model_dir]))
    async with TestClient(TestServer(build_app(node))) as client:
        job_id = (await (await client.post("/v1/bundles", json=bundle_json(group))).json())["job_id"]
        assert await node.validate_next() == job_id
        assert await node.validate_next() is None
        job = await (await client.get(f"/v1/jobs/{job_id}")).json()
        assert job["status"] == "done"
        assert job["verdict"]["outcome"] == "accepted" and job["verdict"]["replayed"] is False
        # 4 prompt tokens + 3 fed-back outputs = 7 positions; 2 layers per stage; 1 gwei per unit.
        assert job["verdict"]["rewards_wei"] == [str(2 * 7 * 10**9)] * 3
        board = (await (await client.get("/v1/leaderboard")).json())["items"]
        assert {row["address"] for row in board} == {k.address for k in worker_keys}
        assert all(row["rewards"] == str(14 * 10**9) for row in board)
        assert (await (await client.get("/health")).json())["entries_waiting"] == 3  # the three rewards
        closed = await client.post("/v1/admin/epochs/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert closed.status == 201
        assert (await (await client.get("/health")).json())["entries_waiting"] == 0
        epochs = (await (await client.get("/v1/epochs")).json())["items"]
        assert epochs[0]["entry_count"] >= 3 and epochs[0]["anchor_tx"] is None
        evidence = await (await client.get(f"/v1/jobs/{job_id}/evidence")).json()
        assert evidence["replayed"] is False and evidence["bundle"]["spec"]["seed"] == 7
        # each stage can fetch what the contract's claim() wants, against the epoch's rewards root
        from ledger.epochs import RewardProof

        for key in worker_keys:
            answer = await (await client.get(f"/v1/workers/{key.address.lower()}/reward-proof")).json()
            proof = RewardProof(answer["epoch"], answer["worker"], int(answer["cumulative"]), tuple(answer["proof"]),
                                answer["rewards_root"])
            assert proof.verify() and proof.worker == key.address and proof.cumulative == 14 * 10**9
            assert proof.rewards_root == epochs[0]["rewards_root"]
        assert await (await client.get(f"/v1/workers/{worker_keys[-1].address}/reward-proof?epoch=1")).json() == answer
        stranger = SigningKey.generate().address
        await assert_error(await client.get(f"/v1/workers/{stranger}/reward-proof"), 404, "no_reward")
        await assert_error(await client.get(f"/v1/workers/{worker_keys[0].address}/reward-proof?epoch=2"), 404, "no_reward")
        for bad in ("0", "-1", "x", "²", "9" * 30):
            await assert_error(await client.get(f"/v1/workers/{worker_keys[0].address}/reward-proof?epoch={bad}"), 400, "bad_query")


async def test_a_five_thousand_digit_integer_is_a_400_not_a_500(client):
    """Python refuses to convert integers past 4300 digits with a ValueError the bundle parser did not catch:
    every such request cost a 500 and a traceback in the log."""
    response = await client.post("/v1/bundles", data='{"version": ' + "9" * 5000 + "}")
    body = await response.json()
    assert response.status == 400 and body["error"]["code"] == "malformed_json", body


class SignatureWork:
    """Counts every signature recovery (receipts, complaints, handoff claims), and those run on the event
    loop's thread."""

    def __init__(self, monkeypatch) -> None:
        import threading

        import coincurve

        self.calls, self.on_loop = 0, 0
        recover = coincurve.PublicKey.from_signature_and_message

        def counted(*args, **kwargs):
            self.calls += 1
            self.on_loop += threading.current_thread() is threading.main_thread()
            return recover(*args, **kwargs)

        monkeypatch.setattr(coincurve.PublicKey, "from_signature_and_message", counted)


def made_up_bundle(group, claims_per_stage: int) -> str:
    """A job nobody issued, its stages the attacker's own keys, every stage after the first carrying many
    validly signed handoff claims (found by the review of issue 15: 4,104 recoveries, 0.36 s, then 403)."""
    from node.protocol.bundle import Bundle, SignedStage, expected_proof_count
    from node.protocol.handoff import HandoffClaim, ReceivedHandoff
    from node.protocol.job import JobSpec, SamplingParams, StageAssignment
    from node.protocol.receipts import expected_receipt
    from tests.validator.factory import SPLITS

    attackers = [SigningKey.generate() for _ in SPLITS]
    spec = JobSpec(model_id=group.model_id, prompt_token_ids=(1, 2, 3),
                   sampling=SamplingParams(temperature=0.0, max_new_tokens=1, top_k=0, top_p=1.0), seed=1,
                   group_id="made-up", stages=tuple(StageAssignment(k.address, a, b) for k, (a, b) in zip(attackers, SPLITS)))
    output, signed = [5], []
    for index, key in enumerate(attackers):
        proofs = (b"",) * expected_proof_count(len(output))
        received = ()
        if index > 0:
            claims = (HandoffClaim(spec.job_id, index - 1, i, 0, 1, "fp32", b"\0" * 32, b"\1") for i in range(claims_per_stage))
            received = tuple(ReceivedHandoff(c, c.sign(attackers[index - 1]), b"") for c in claims)
        receipt = expected_receipt(spec, index, output, proofs,
                                   received_proofs=[h.claim.proof for h in received] if received else signed[-1].proofs if signed else ())
        signed.append(SignedStage(receipt, sign_receipt(key, receipt, group.domain), proofs, received))
    return Bundle(spec, tuple(signed), tuple(output)).to_json()


async def test_a_bundle_of_a_job_nobody_issued_is_refused_before_any_signature_is_checked(client, node, group, monkeypatch):
    # The attack (issue 15, item 4): flood the API with validly shaped bundles of made-up jobs; each cost
    # the validator its signature recoveries before the job was even looked up.
    async def issued_nothing(spec):
        return f"job {spec.job_id_hex} was not issued by this validator's orchestrator"

    node.spec_guard = issued_nothing
    work = SignatureWork(monkeypatch)
    await assert_error(await client.post("/v1/bundles", json=bundle_json(group)), 403, "unassigned_job")
    await assert_error(await client.post("/v1/bundles", data=made_up_bundle(group, 500)), 403, "unassigned_job")
    assert work.calls == 0


async def test_a_bundle_already_in_is_refused_before_any_signature_is_checked(client, group, monkeypatch):
    document = bundle_json(group)
    work = SignatureWork(monkeypatch)
    assert (await client.post("/v1/bundles", json=document)).status == 202
    assert work.calls == len(group.keys) and work.on_loop == 0  # each receipt once, off the event loop
    await assert_error(await client.post("/v1/bundles", json=document), 409, "duplicate_bundle")
    assert work.calls == len(group.keys)


async def test_a_monitor_may_ask_head_of_any_read(client):
    # aiohttp's add_get answered HEAD too; the route table (openapi.add_routes) must keep that: uptime
    # checks and load balancers probe /health with HEAD, and got 405 after the move to declared routes.
    for path in ("/health", "/metrics", "/openapi.json", "/v1/jobs", "/v1/epochs"):
        response = await client.head(path)
        assert response.status == 200, (path, response.status)
    assert (await client.head("/v1/bundles")).status == 405  # a write is no read
