"""Validator processes sharing a ledger: killed with SIGKILL mid-validation and restarted, every bundle
ends with exactly one verdict; two processes on one PostgreSQL ledger never validate one job twice."""

import asyncio
import os
import signal
import time

import pytest
from sqlalchemy import func, select

from ledger.models import Job, Verdict
from ledger.store import Ledger
from node.validator.replay_models import ReplayModels
from node.validator.service import ValidatorNode
from tests.validator.conftest import TEST_DOMAIN, make_config, stake_all
from tests.validator.factory import signed_bundle
from tests.validator.processes import spawn_validator, start_validator, stop, wait_listening

pytestmark = pytest.mark.slow

LONG_PROMPT = [i % 250 + 1 for i in range(1000)]  # a replay of a few tenths of a second on the tiny model


async def fill_queue(url, model_dir, group, worker_keys, count: int) -> list[str]:
    """Bundles whose proofs were never computed: each replay blames stage 0 (one slash per job)."""
    ledger = await Ledger.open(url)
    try:
        await stake_all(ledger, worker_keys)
        node = ValidatorNode(make_config(model_dir), ledger, domain=TEST_DOMAIN, models=ReplayModels([model_dir]))
        ids = []
        for n in range(count):
            bundle = signed_bundle(group, group.spec(LONG_PROMPT, seed=n, max_new_tokens=40), [7] * 40, proof_seed=n)
            ids.append((await node.submit_bundle(bundle.to_json().encode()))["job_id"])
        return ids
    finally:
        await ledger.close()


_ENGINES = {}


async def queue_state(url) -> dict[str, int]:
    """Job counts by status, read on one shared read-only engine (polling must not take write locks)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = _ENGINES.get(url) or _ENGINES.setdefault(url, create_async_engine(url))
    async with engine.connect() as conn:
        rows = (await conn.execute(select(Job.status, func.count()).group_by(Job.status))).all()
    return {status: count for status, count in rows}


@pytest.fixture(autouse=True)
async def _close_probes():
    yield
    for engine in _ENGINES.values():
        await engine.dispose()
    _ENGINES.clear()


async def wait_until(predicate, timeout: float, poll: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(poll)
    raise TimeoutError("condition not reached")


async def assert_one_verdict_each(url, job_ids):
    ledger = await Ledger.open(url, migrate=False)
    try:
        async with ledger.reading() as conn:
            verdicts = (await conn.execute(select(Verdict.job_id, func.count()).group_by(Verdict.job_id))).all()
            attempts = dict((await conn.execute(select(Job.job_id, Job.attempts))).all())
        assert sorted(job_id for job_id, _ in verdicts) == sorted(job_ids)
        assert all(count == 1 for _, count in verdicts)
        slashes = [e for e in await ledger.entries(0, 10_000) if e.kind == "slash"]
        assert sorted(e.job_id for e in slashes) == sorted(job_ids)  # one consequence per job, never two
        assert (await ledger.verify()).ok
        return attempts
    finally:
        await ledger.close()


async def test_kill_9_during_validation_then_restart_leaves_one_verdict_per_bundle(
    sqlite_url, model_dir, group, worker_keys, tmp_path
):
    job_ids = await fill_queue(sqlite_url, model_dir, group, worker_keys, 5)
    process, _ = start_validator(sqlite_url, model_dir, tmp_path, "validator-a")
    try:
        await wait_until(lambda: _validating(sqlite_url), 60)
        os.kill(process.pid, signal.SIGKILL)  # in the middle of a replay
        process.wait()
        state = await queue_state(sqlite_url)
        assert state.get("validating") == 1, state  # the interrupted claim is still there
        process, _ = start_validator(sqlite_url, model_dir, tmp_path, "validator-a")
        await wait_until(lambda: _all_done(sqlite_url, len(job_ids)), 90, poll=0.2)
    finally:
        stop(process)
    attempts = await assert_one_verdict_each(sqlite_url, job_ids)
    assert max(attempts.values()) == 2 and sum(attempts.values()) == len(job_ids) + 1  # only the interrupted one twice


async def test_two_validators_on_one_postgresql_ledger_never_validate_a_job_twice(
    pg_url, model_dir, group, worker_keys, tmp_path
):
    await (await Ledger.open(pg_url)).close()  # schema first, so both processes start on a ready ledger
    names = ("validator-a", "validator-b")
    processes = [spawn_validator(pg_url, model_dir, tmp_path, name) for name in names]  # start side by side
    try:
        for process, name in zip(processes, names):
            wait_listening(process, tmp_path, name)
        job_ids = await fill_queue(pg_url, model_dir, group, worker_keys, 10)
        await wait_until(lambda: _all_done(pg_url, len(job_ids)), 120, poll=0.2)
    finally:
        for process in processes:
            stop(process)
    attempts = await assert_one_verdict_each(pg_url, job_ids)
    assert set(attempts.values()) == {1}  # no job was ever claimed twice
    ledger = await Ledger.open(pg_url, migrate=False)
    try:
        async with ledger.reading() as conn:
            by = dict((await conn.execute(select(Job.claimed_by, func.count()).group_by(Job.claimed_by))).all())
    finally:
        await ledger.close()
    assert set(by) == {"validator-a", "validator-b"}, by  # both worked the shared queue


async def _validating(url) -> bool:
    return (await queue_state(url)).get("validating", 0) > 0


async def _all_done(url, count) -> bool:
    return (await queue_state(url)).get("done", 0) == count


async def test_a_validator_without_orchestration_takes_only_jobs_an_orchestrator_on_its_ledger_awaits(
    sqlite_url, model_dir, group, worker_keys, tmp_path
):
    import aiohttp

    from node.validator.deadlines import expect

    issued = group.spec([1, 2, 3], seed=11, max_new_tokens=4)
    invented = group.spec([1, 2, 3], seed=12, max_new_tokens=4)  # a seed the worker chose itself (I1)
    ledger = await Ledger.open(sqlite_url)
    try:
        await stake_all(ledger, worker_keys)
        assert await expect(ValidatorNode(make_config(model_dir), ledger, domain=TEST_DOMAIN, models=ReplayModels([model_dir])), issued)
    finally:
        await ledger.close()
    process, url = start_validator(sqlite_url, model_dir, tmp_path, "validate-only")
    try:
        async with aiohttp.ClientSession() as session:
            answers = []
            for spec in (invented, issued):
                body = signed_bundle(group, spec, [7] * 4).to_json().encode()
                async with session.post(url + "/v1/bundles", data=body, headers={"Content-Type": "application/json"}) as r:
                    answers.append((r.status, (await r.json()).get("error", {}).get("code")))
    finally:
        stop(process)
    assert answers == [(403, "unassigned_job"), (202, None)]
