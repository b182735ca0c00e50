"""A restarted orchestrator keeps its workers and groups (issue 19), on SQLite and PostgreSQL: what it had is
read back from the ledger, nobody registers again, the groups are the same and serve tasks; a registration
captured before the restart and replayed after it does not take a worker out of its group."""

from __future__ import annotations

import asyncio
import time

import pytest

from ledger.store import Ledger
from node.orchestration.grouping import GroupingPolicy, ModelShape
from node.orchestration.leadership import Leadership
from node.orchestration.orchestrator import Orchestrator
from node.orchestration.registry import RegistrationRefused, Registry, RegistryPolicy, stake_lookup
from node.orchestration.resume import SavedOrchestration
from node.pipeline.weights import model_id
from node.protocol.worker_messages import make_heartbeat, make_registration

from .conftest import CAPACITIES, MIB
from .local_pipeline import LocalPipeline, LocalWorker
from .test_orchestration import Clock, run_tasks

SHAPE = ModelShape(num_layers=10, layer_bytes=4 * MIB)
POLICY = GroupingPolicy(stages_per_group=2)


def orchestrator_on(ledger, model_dir, keys, driver, clock) -> Orchestrator:
    """What `validator run` builds, minus HTTP: a fresh registry and orchestrator over the same ledger."""
    registry = Registry(stake_lookup({k.address: 10**18 for k in keys}), RegistryPolicy(heartbeat_timeout_s=30), clock)
    served = model_id(model_dir)
    return Orchestrator(registry, driver, served, SHAPE, POLICY, saved=SavedOrchestration(ledger, served))


@pytest.fixture
async def ledger(db_url):
    async with await Ledger.open(db_url) as ledger:
        yield ledger


async def test_a_restarted_orchestrator_resumes_its_workers_and_groups_without_new_registrations(
    ledger, model_dir, worker_keys
):
    keys, clock = worker_keys[:4], Clock()
    workers = {k.address: LocalWorker(k.address, model_dir) for k in keys}
    before = orchestrator_on(ledger, model_dir, keys, LocalPipeline(model_dir, workers), clock)
    for key, capacity in zip(keys, CAPACITIES):
        await before.register(make_registration(key, capacity, "eu", "http://127.0.0.1:9000", now=clock.now))
    await before.refresh()
    groups = before.grouping.groups
    assert len(groups) == 2

    clock.now += 5  # the validator process restarts; the workers' stage servers keep their assignments
    driver = LocalPipeline(model_dir, workers)
    after = orchestrator_on(ledger, model_dir, keys, driver, clock)
    await after.resume()
    assert after.grouping.groups == groups
    assert {r.address for r in after.registry.healthy()} == {k.address for k in keys}
    assert sorted(driver.prepared) == sorted(g.group_id for g in groups)  # given back to the driver, nothing new
    for key in keys:  # heartbeats go on as before the restart
        await after.heartbeat(make_heartbeat(key, now=clock.now))
    results, progress = await run_tasks(after)
    assert progress.tasks_done == len(results) and all(r.error is None for r in results.values())
    assert {r.groups[0] for r in results.values()} <= {g.group_id for g in groups}


async def test_a_restored_worker_that_no_longer_answers_is_dropped_and_its_group_regrouped(ledger, model_dir, worker_keys):
    keys, clock = worker_keys[:4], Clock()
    workers = {k.address: LocalWorker(k.address, model_dir) for k in keys}
    before = orchestrator_on(ledger, model_dir, keys, LocalPipeline(model_dir, workers), clock)
    for key, capacity in zip(keys, CAPACITIES):
        await before.register(make_registration(key, capacity, "eu", "http://127.0.0.1:9000", now=clock.now))
    await before.refresh()
    gone = before.grouping.groups[0].stages[1].worker
    workers[gone].kill()  # it died while the validator was down

    after = orchestrator_on(ledger, model_dir, keys, LocalPipeline(model_dir, workers), clock)
    await after.resume()
    assert gone not in {r.address for r in after.registry.all()}
    assert before.grouping.groups[1] in after.grouping.groups  # the intact group is kept as it was
    assert all(gone not in g.workers for g in after.grouping.groups)

    again = orchestrator_on(ledger, model_dir, keys, LocalPipeline(model_dir, workers), clock)
    await again.resume()  # and it stays forgotten: it must register again
    assert gone not in {r.address for r in again.registry.all()}


async def test_a_registration_replayed_after_a_restart_cannot_move_a_worker_out_of_its_group(
    ledger, model_dir, worker_keys
):
    # the attack: an eavesdropper keeps a worker's signed registration and sends it again once the validator
    # has restarted (and forgotten the nonces it saw); accepted, it reads as the worker's restart and the
    # worker's group is taken apart
    keys, clock = worker_keys[:2], Clock()
    workers = {k.address: LocalWorker(k.address, model_dir) for k in keys}
    before = orchestrator_on(ledger, model_dir, keys, LocalPipeline(model_dir, workers), clock)
    captured = [make_registration(k, c, "eu", "http://127.0.0.1:9000", now=clock.now) for k, c in zip(keys, CAPACITIES)]
    for signed in captured:
        await before.register(signed)
    await before.refresh()
    (group,) = before.grouping.groups

    clock.now += 30
    after = orchestrator_on(ledger, model_dir, keys, LocalPipeline(model_dir, workers), clock)
    await after.resume()
    with pytest.raises(RegistrationRefused) as refused:
        await after.register(captured[1])
    assert refused.value.code == "replayed_message"
    assert after.grouping.groups == (group,)

    clock.now += 1  # the worker itself restarting still registers (a newer registration)
    await after.register(make_registration(keys[1], CAPACITIES[1], "eu", "http://127.0.0.1:9001", now=clock.now))
    assert after.registry.get(keys[1].address).stage_url == "http://127.0.0.1:9001"


class Unreachable:
    """A ledger this process can no longer reach (it hangs, or the network to the database is cut)."""

    def transaction(self):
        raise ConnectionError("database unreachable")

    reading = transaction


async def leading(orchestration: Orchestrator, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if orchestration.standing_by is None and orchestration.grouping.groups:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not orchestrating (standing by for {orchestration.standing_by})")


async def test_of_two_validators_on_one_ledger_one_orchestrates_and_the_other_takes_over_when_it_is_gone(
    ledger, model_dir, worker_keys
):
    keys, clock = worker_keys[:4], time.time
    workers = {k.address: LocalWorker(k.address, model_dir) for k in keys}
    first = orchestrator_on(ledger, model_dir, keys, LocalPipeline(model_dir, workers), clock)
    second = orchestrator_on(ledger, model_dir, keys, LocalPipeline(model_dir, workers), clock)
    first_lead = Leadership(first, ledger, "validator-a", lease_s=2.0)
    second_lead = Leadership(second, ledger, "validator-b", lease_s=2.0)

    async def term(orchestrator):
        await orchestrator.resume()
        await orchestrator.run_forever()

    a = asyncio.create_task(first_lead.run(lambda: term(first)))
    await asyncio.sleep(0.3)
    b = asyncio.create_task(second_lead.run(lambda: term(second)))
    try:
        for key, capacity in zip(keys, CAPACITIES):
            await first.register(make_registration(key, capacity, "eu", "http://127.0.0.1:9000"))
        await first.refresh()
        await leading(first)
        groups = first.grouping.groups
        with pytest.raises(RegistrationRefused) as refused:  # the other one stands by and says who leads
            await second.register(make_registration(keys[0], CAPACITIES[0], "eu", "http://127.0.0.1:9000"))
        assert refused.value.code == "not_orchestrating" and "validator-a" in str(refused.value)

        first_lead.ledger = Unreachable()  # the orchestrating process is cut off: it can renew no more
        await leading(second, timeout=15)
        assert second.grouping.groups == groups  # taken over as they were, nobody registered again
        assert first.standing_by is not None and first.grouping.groups == ()  # and the first one let go in time
    finally:
        for task in (a, b):
            task.cancel()
        await asyncio.gather(a, b, return_exceptions=True)
