"""The ledger round trips of registrations and heartbeats are shared (issue 19), and every check they made
still holds for each message: an unstaked or banned worker arriving in a batch beside staked ones is refused,
a signature is recovered once per message and a forged one is still refused, and a regroup timer round that
could change nothing computes nothing, while one after a missed heartbeat still drops the silent worker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from node.orchestration.bans import BanPolicy, ledger_bans
from node.orchestration.batched_calls import BatchedCalls
from node.orchestration.registry import RegistrationRefused, Registry, RegistryPolicy
from node.orchestration.setup import BATCHED_READS, _ledger_stake
from node.protocol.signing import SigningKey
from node.protocol.worker_messages import MessageError, Signed, make_heartbeat, make_registration

from .test_orchestration import start
from .test_registry import CAPACITY, NOW, Clock

MIN_STAKE = 10**18


@pytest.fixture
def keys() -> list[SigningKey]:
    return [SigningKey(bytes([i + 1]) * 32) for i in range(6)]


class LedgerNode:
    """What `_ledger_stake` reads: stakes as the ledger follows them, one statement per call, counted."""

    def __init__(self, stakes: dict[str, int]) -> None:
        self.stakes = stakes
        self.statements = 0
        self.config = SimpleNamespace(min_stake_wei=MIN_STAKE)
        self.chain = None

    async def stakes_of(self, addresses: list[str]) -> dict[str, int]:
        self.statements += 1
        await asyncio.sleep(0.005)
        return {a: self.stakes[a] for a in addresses if a in self.stakes}


async def test_batched_calls_answer_each_caller_with_its_own_result_in_few_round_trips():
    seen: list[list[int]] = []

    async def square(items):
        seen.append(list(items))
        await asyncio.sleep(0.001)
        return [i * i for i in items]

    batched = BatchedCalls(square, max_batch=10)
    results = await asyncio.gather(*(batched(i) for i in range(25)))
    assert results == [i * i for i in range(25)]
    assert batched.batches == len(seen) == 3 and max(len(s) for s in seen) == 10


async def test_a_failed_batch_fails_its_callers_and_the_next_batch_still_runs():
    calls = 0

    async def flaky(items):
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        if calls == 1:
            raise ConnectionError("the ledger went away")
        return list(items)

    batched = BatchedCalls(flaky)
    first = await asyncio.gather(batched(1), batched(2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in first)
    assert await batched(3) == 3


async def test_heartbeats_beside_an_unstaked_worker_share_one_stake_read_and_it_alone_is_dropped(keys):
    """Attack: a worker unstakes (or is slashed to nothing) and keeps heartbeating among honest workers,
    hoping its stake is answered from the batch it shares with them."""
    node = LedgerNode({k.address: MIN_STAKE for k in keys})
    clock = Clock()
    registry = Registry(_ledger_stake(node), RegistryPolicy(min_stake_wei=MIN_STAKE), clock, ledger_reads=BATCHED_READS)
    for key in keys:
        await registry.register(make_registration(key, CAPACITY, "eu", "http://h:1", now=NOW))
    node.stakes[keys[2].address] = MIN_STAKE - 1  # withdrawn below the minimum since it registered
    node.statements = 0
    clock.now += 1
    outcomes = await asyncio.gather(*(registry.heartbeat(make_heartbeat(k, now=clock.now)) for k in keys),
                                    return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, RegistrationRefused)]
    assert [o.code for o in refused] == ["insufficient_stake"] and outcomes.index(refused[0]) == 2
    assert keys[2].address not in {r.address for r in registry.all()}
    assert node.statements <= 2  # six heartbeats, not six statements


class SlashLedger:
    def __init__(self, slashed_at_ms: dict[str, list[int]]) -> None:
        self.slashed_at_ms = slashed_at_ms
        self.statements = 0

    async def slash_times_ms(self, workers, per_worker):
        self.statements += 1
        await asyncio.sleep(0.005)
        return {w: self.slashed_at_ms[w][:per_worker] for w in workers if w in self.slashed_at_ms}

    async def latest_drift_flag_ms(self, workers):
        return {}


async def test_a_banned_worker_registering_beside_others_is_refused_and_they_are_not(keys):
    """Attack: a worker banned for being blamed twice registers in the same burst as honest ones."""
    banned = keys[3].address
    ledger = SlashLedger({banned: [int((NOW - 60) * 1000), int((NOW - 120) * 1000)]})
    stakes = {k.address: MIN_STAKE for k in keys}

    async def stake_of(address):
        return stakes[address]

    registry = Registry(stake_of, RegistryPolicy(min_stake_wei=MIN_STAKE), Clock(),
                        banned_until=ledger_bans(ledger, BanPolicy()), ledger_reads=BATCHED_READS)
    outcomes = await asyncio.gather(
        *(registry.register(make_registration(k, CAPACITY, "eu", "http://h:1", now=NOW)) for k in keys),
        return_exceptions=True)
    refused = [(i, o.code) for i, o in enumerate(outcomes) if isinstance(o, RegistrationRefused)]
    assert refused == [(3, "banned")]
    assert {r.address for r in registry.all()} == {k.address for k in keys} - {banned}
    assert ledger.statements <= 2


def test_a_signature_is_recovered_once_per_message_and_a_forged_one_is_refused_every_time(keys):
    signed = make_heartbeat(keys[0], now=NOW)
    signed.verify()
    assert signed._verified
    forged = Signed(signed.message, make_heartbeat(keys[1], now=NOW).signature)
    for _ in range(2):
        with pytest.raises(MessageError, match="not by"):
            forged.verify()
    assert not forged._verified and forged != signed


async def test_a_timer_round_that_could_change_nothing_computes_nothing_and_a_silent_worker_still_drops(
    model_dir, worker_keys
):
    orchestrator, _, clock = await start(model_dir, worker_keys)
    await orchestrator.refresh()
    rounds = orchestrator.rounds
    await orchestrator._refresh(timer=True)
    assert orchestrator.rounds == rounds  # same workers, same grouping: nothing to compute
    silent = orchestrator.grouping.groups[0].stages[0].worker
    clock.now += 31  # past the heartbeat timeout for the one that stopped
    for key in worker_keys:
        if key.address != silent:
            await orchestrator.heartbeat(make_heartbeat(key, now=clock.now))
    await orchestrator._refresh(timer=True)
    assert orchestrator.rounds == rounds + 1
    assert silent not in {w for g in orchestrator.grouping.groups for w in g.workers}


async def test_spares_waiting_for_others_get_their_shorter_group_once_their_wait_runs_out(model_dir, worker_keys):
    from node.orchestration.grouping import GroupingPolicy

    orchestrator, _, _ = await start(model_dir, worker_keys, GroupingPolicy(preferred_stages=3, short_group_wait_s=1.5))
    await orchestrator.refresh()
    waiting = len(orchestrator.grouping.spares)
    assert waiting >= 2, orchestrator.grouping
    rounds = orchestrator.rounds
    await orchestrator._refresh(timer=True)
    assert orchestrator.rounds == rounds  # nothing changed, and their wait has not run out
    await asyncio.sleep(1.6)
    await orchestrator._refresh(timer=True)
    assert orchestrator.rounds == rounds + 1 and len(orchestrator.grouping.spares) < waiting


async def test_verdicts_asked_together_answer_each_job_with_its_own_outcome():
    """Attack: a blamed job's sequence asks for its verdict in the same statement as accepted ones; it must not
    be counted done (and its output recorded as a dataset row) on their outcome."""
    from node.orchestration.setup import _verdict_of

    accepted, blamed, pending = ("0x" + c * 64 for c in "abc")

    class VerdictLedger:
        """ledger.verdict_outcomes: outcomes by lowercase job id, for the ids asked that have a verdict."""

        statements = 0

        async def verdict_outcomes(self, job_ids):
            self.statements += 1
            await asyncio.sleep(0.005)
            decided = {accepted: "accepted", blamed: "blamed"}
            return {j.lower(): decided[j.lower()] for j in job_ids if j.lower() in decided}

    ledger = VerdictLedger()
    verdict_of = _verdict_of(SimpleNamespace(ledger=ledger))
    asked = (accepted, blamed, pending, "0x" + accepted[2:].upper())
    outcomes = await asyncio.gather(*(verdict_of(j) for j in asked))
    assert outcomes == ["accepted", "blamed", None, "accepted"] and ledger.statements == 1
