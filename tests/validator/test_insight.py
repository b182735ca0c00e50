"""The read-only routes the dashboard draws from (node/validator/insight_api.py), after one accepted job and two
slashes of the same worker, and an epoch closed."""

from __future__ import annotations

import pytest

from tests.validator.conftest import ADMIN_TOKEN
from tests.validator.factory import run_job
from tests.validator.test_api import assert_error
from tests.validator.test_validation import PROMPT, submit_and_validate


async def judged(client, node, group) -> None:
    await submit_and_validate(client, node, run_job(group, group.spec(PROMPT, max_new_tokens=6, seed=1)))
    for seed in (2, 3):
        await submit_and_validate(client, node, run_job(group, group.spec(PROMPT, max_new_tokens=6, seed=seed), perturbed_stage=1))


async def get(client, path):
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_slashed_workers_rank_below_clean_ones_and_repeated_slashes_collapse(client, node, group):
    await judged(client, node, group)
    cheater = group.keys[1].address
    standings = await get(client, "/v1/standings")
    assert standings["total"] == 3 and [row["rank"] for row in standings["items"]] == [1, 2, 3]
    assert standings["items"][-1]["address"] == cheater and standings["items"][-1]["slashes"] == 2
    last = standings["items"][-1]
    assert int(last["net_wei"]) == int(last["rewards"]) - int(last["slashed_amount"]) < 0
    second = await get(client, "/v1/standings?limit=1&offset=1")
    assert [row["rank"] for row in second["items"]] == [2] and second["offset"] == 1

    collapsed = await get(client, "/v1/slashes/by-worker")
    [row] = collapsed["items"]
    assert (row["worker"], row["count"], row["last_stage"], collapsed["total"]) == (cheater, 2, 1, 1)
    assert "mantissa error" in row["last_reason"] and row["last_job_id"].startswith("0x")
    assert row["last_chain_status"] == "pending" and row["last_chain_tx"] is None  # owed to the contract, not sent
    everything = await get(client, "/v1/slashes?limit=1")
    assert everything["total"] == 2 and len(everything["items"]) == 1  # the full history pages too
    clean = await get(client, f"/v1/slashes?worker={group.keys[0].address.lower()}")
    assert clean["total"] == 0 and (await get(client, f"/v1/slashes?worker={cheater}"))["total"] == 2
    await assert_error(await client.get("/v1/slashes?worker=0x12"), 400, "bad_address")
    job = await get(client, f"/v1/jobs/{row['last_job_id']}")
    assert "mantissa error" in job["verdict"]["why"]  # the verifier's one line, on the job too


async def test_the_series_buckets_rewards_slashes_and_verified_tokens(client, node, group):
    await judged(client, node, group)
    series = await get(client, "/v1/stats/series?bucket_s=3600")
    assert series["bucket_s"] == 3600 and len(series["items"]) == 1
    [bucket] = series["items"]
    # three stages paid for the honest job, and stage 0 (before the blamed stage 1) for each cheating one
    assert bucket["jobs"] == 3 and bucket["slashes"] == 2 and bucket["reward_entries"] == 3 + 2
    assert bucket["tokens"] > 0 and bucket["tokens_per_s"] == round(bucket["tokens"] / 3600, 3)
    assert int(bucket["rewards_wei"]) > 0 and int(bucket["slashed_wei"]) > 0
    await assert_error(await client.get("/v1/stats/series?bucket_s=7"), 400, "bad_query")
    await assert_error(await client.get("/v1/stats/series?buckets=0"), 400, "bad_query")
    # digits past what int() converts (4300) were a 500; any number too long to be a choice is a 400
    await assert_error(await client.get("/v1/stats/series?bucket_s=" + "9" * 5000), 400, "bad_query")
    await assert_error(await client.get("/v1/stats/series?buckets=" + "9" * 5000), 400, "bad_query")


async def test_a_worker_s_jobs_entries_and_claimable_amount(client, node, group):
    await judged(client, node, group)
    cheater = group.keys[1].address
    jobs = await get(client, f"/v1/workers/{cheater.lower()}/jobs")
    assert jobs["total"] == 3 and {row["outcome"] for row in jobs["items"]} == {"accepted", "blamed"}
    blamed = [row for row in jobs["items"] if row["blamed"]]
    assert len(blamed) == 2 and all("mantissa error" in row["reason"] and int(row["slashed_wei"]) > 0 for row in blamed)
    accepted = next(row for row in jobs["items"] if row["outcome"] == "accepted")
    assert int(accepted["reward_wei"]) > 0 and accepted["stage"] == 1
    page = await get(client, f"/v1/workers/{cheater}/jobs?limit=1&offset=2")
    assert len(page["items"]) == 1 and page["total"] == 3

    slashes = await get(client, f"/v1/workers/{cheater}/entries?kind=slash")
    assert slashes["total"] == 2 and all(entry["kind"] == "slash" for entry in slashes["items"])
    await assert_error(await client.get(f"/v1/workers/{cheater}/entries?kind=nope"), 400, "bad_query")

    before = await get(client, f"/v1/workers/{cheater}/claimable")
    assert before["epoch"] is None and before["cumulative_wei"] == "0" and int(before["pending_wei"]) > 0
    closed = await client.post("/v1/admin/epochs/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert closed.status == 201
    after = await get(client, f"/v1/workers/{cheater}/claimable")
    proof = await get(client, f"/v1/workers/{cheater}/reward-proof")
    assert after["epoch"] == 1 and after["cumulative_wei"] == proof["cumulative"]
    await assert_error(await client.get("/v1/workers/0x" + "00" * 20 + "/claimable"), 404, "unknown_worker")
    await assert_error(await client.get(f"/v1/workers/{cheater}/jobs?offset=-1"), 400, "bad_query")


async def test_tasks_show_each_task_s_accepted_samples_and_pass_rate_per_model(client, node, group):
    from ledger.samples import SampleError, SampleRecord

    await judged(client, node, group)
    jobs = (await get(client, f"/v1/workers/{group.keys[1].address}/jobs"))["items"]
    accepted = next(row["job_id"] for row in jobs if row["outcome"] == "accepted")
    blamed = next(row["job_id"] for row in jobs if row["blamed"])
    sampling = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 6, "stop_ids": []}

    def record(job_id):
        return SampleRecord(job_id=job_id, task_id="linear-1-00001", task_source="gen:linear:n=1:seed=1",
                            model_id=group.model_id, prompt_token_ids=(1, 2), completion_token_ids=(3, 4),
                            completion_text="\\boxed{2}", sampling=sampling, seed=1, answer="2", checker="math",
                            correct=True)

    assert (await get(client, "/v1/tasks"))["total"] == 0
    await node.ledger.record_sample(record(accepted))
    with pytest.raises(SampleError, match="blamed"):
        await node.ledger.record_sample(record(blamed))
    page = await get(client, "/v1/tasks?limit=10")
    assert page["total"] == 1
    assert page["items"][0] == {"task_id": "linear-1-00001", "model_id": group.model_id,
                                "task_source": "gen:linear:n=1:seed=1", "samples": 1, "checked": 1, "correct": 1,
                                "pass_rate": 1.0}
    await assert_error(await client.get("/v1/tasks?limit=0"), 400, "bad_query")
