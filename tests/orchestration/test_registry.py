"""Registration and heartbeats: only staked, fresh, correctly signed workers are kept, and only while alive."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from node.orchestration.registry import LEDGER_READS, RegistrationRefused, Registry, RegistryPolicy, stake_lookup
from node.protocol.signing import SigningKey
from node.protocol.worker_messages import (
    UNBOUND_VALIDATOR,
    Capacity,
    MessageError,
    make_heartbeat,
    make_registration,
    parse_signed_heartbeat,
    parse_signed_registration,
)

NOW = 1_800_000_000.0
CAPACITY = Capacity(memory_bytes=8 << 30, layer_tokens_per_s=5000.0)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys() -> list[SigningKey]:
    return [SigningKey(bytes([i + 1]) * 32) for i in range(3)]


def registry_for(stakes: dict, clock: Clock, **policy) -> Registry:
    return Registry(stake_lookup(stakes), RegistryPolicy(min_stake_wei=10**18, **policy), clock)


async def test_a_staked_worker_registers_and_the_wire_form_round_trips(keys):
    clock = Clock()
    registry = registry_for({keys[0].address: 2 * 10**18}, clock)
    signed = make_registration(keys[0], CAPACITY, "eu-west", "http://127.0.0.1:9001/", now=NOW)
    parsed = parse_signed_registration(signed.to_json())
    assert parsed == dataclasses.replace(signed, message=dataclasses.replace(signed.message, stage_url="http://127.0.0.1:9001"))
    record = await registry.register(parsed)
    assert (record.address, record.region, record.stake_wei) == (keys[0].address, "eu-west", 2 * 10**18)
    assert registry.healthy() == (record,)


async def test_unstaked_and_understaked_keys_are_refused(keys):
    registry = registry_for({keys[1].address: 10**17}, Clock())
    for key in keys[:2]:
        with pytest.raises(RegistrationRefused) as refused:
            await registry.register(make_registration(key, CAPACITY, "eu", "http://h:1", now=NOW))
        assert refused.value.code == "insufficient_stake" and refused.value.status == 403
    assert registry.all() == ()


async def test_a_registration_for_another_validator_cannot_enrol_its_worker_here(keys):
    """Whoever sees a worker's registration to one validator (it travels in the clear to its URL) could replay
    it to another, which would then send signed stage control to that worker's server and count on it."""
    ours, theirs = SigningKey.generate().address, SigningKey.generate().address
    registry = registry_for({keys[0].address: 10**18}, Clock(), validator=ours, chain_id=31337)
    for validator, chain_id in ((theirs, 31337), (ours, 1), (UNBOUND_VALIDATOR, 0)):
        copied = make_registration(keys[0], CAPACITY, "eu", "http://h:1", now=NOW, validator=validator, chain_id=chain_id)
        with pytest.raises(RegistrationRefused) as refused:
            await registry.register(parse_signed_registration(copied.to_json()))
        assert (refused.value.code, refused.value.status) == ("wrong_validator", 403)
    assert registry.all() == ()
    meant = make_registration(keys[0], CAPACITY, "eu", "http://h:1", now=NOW, validator=ours, chain_id=31337)
    assert (await registry.register(parse_signed_registration(meant.to_json()))).address == keys[0].address


async def test_replayed_and_stale_messages_are_refused(keys):
    clock = Clock()
    registry = registry_for({keys[0].address: 10**18}, clock, max_clock_skew_s=60)
    signed = make_registration(keys[0], CAPACITY, "eu", "http://h:1", now=NOW)
    await registry.register(signed)
    with pytest.raises(RegistrationRefused) as replayed:
        await registry.register(signed)
    assert replayed.value.code == "replayed_message"
    with pytest.raises(RegistrationRefused) as stale:
        await registry.register(make_registration(keys[0], CAPACITY, "eu", "http://h:1", now=NOW - 61))
    assert stale.value.code == "stale_message"


async def test_a_nonce_is_refused_for_its_whole_window_and_forgotten_after_it(keys):
    """Messages arrive out of timestamp order; each nonce is remembered until its own timestamp + skew has
    passed, and no longer, so the table holds one window of traffic however long the validator runs."""
    clock = Clock()
    registry = registry_for({keys[0].address: 10**18}, clock, max_clock_skew_s=60)
    await registry.register(make_registration(keys[0], CAPACITY, "eu", "http://h:1", now=NOW))
    late = make_heartbeat(keys[0], now=NOW + 50)  # remembered until NOW + 110
    early = make_heartbeat(keys[0], now=NOW - 50)  # sent after it, remembered until NOW + 10
    await registry.heartbeat(late)
    await registry.heartbeat(early)
    clock.now = NOW + 20
    for signed, code in ((late, "replayed_message"), (early, "stale_message")):
        with pytest.raises(RegistrationRefused) as refused:
            await registry.heartbeat(signed)
        assert refused.value.code == code
    for _ in range(600):  # ten minutes of one heartbeat a second
        clock.now += 1
        await registry.heartbeat(make_heartbeat(keys[0], now=clock.now))
    assert len(registry._nonces) <= 61


async def test_the_same_message_sent_twice_at_once_is_taken_once(keys):
    """Stakes are read outside the registry's lock (heartbeats must not queue behind each other's ledger
    reads), so two copies of one message can both be past their first check while the stake is read: the
    second is still refused as a replay."""

    async def slow_stake(address: str) -> int:
        await asyncio.sleep(0.01)  # a ledger read: other requests run meanwhile
        return 10**18

    registry = Registry(slow_stake, RegistryPolicy(min_stake_wei=10**18), Clock())
    for signed, send in ((make_registration(keys[0], CAPACITY, "eu", "http://h:1", now=NOW), registry.register),
                         (make_heartbeat(keys[0], now=NOW), registry.heartbeat)):
        outcomes = await asyncio.gather(send(signed), send(signed), return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, RegistrationRefused)]
        assert len(refused) == 1 and refused[0].code == "replayed_message"
    assert [r.address for r in registry.healthy()] == [keys[0].address]


async def test_a_burst_of_heartbeats_reads_a_few_stakes_at_a_time(keys):
    """Heartbeats do not wait for each other's stake reads, but they share the ledger's connection pool with
    intake and verdicts: only LEDGER_READS reads are in flight at once, and every heartbeat is answered."""
    reading, most = 0, 0

    async def counted_stake(address: str) -> int:
        nonlocal reading, most
        reading += 1
        most = max(most, reading)
        await asyncio.sleep(0.005)
        reading -= 1
        return 10**18

    clock = Clock()
    registry = Registry(counted_stake, RegistryPolicy(min_stake_wei=10**18), clock)
    for key in keys:
        await registry.register(make_registration(key, CAPACITY, "eu", "http://h:1", now=NOW))
    beats = [make_heartbeat(keys[i % 3], now=NOW) for i in range(30)]
    records = await asyncio.gather(*(registry.heartbeat(beat) for beat in beats))
    assert len(records) == 30 and most == LEDGER_READS


async def test_a_worker_that_stops_heartbeating_is_no_longer_healthy(keys):
    clock = Clock()
    registry = registry_for({k.address: 10**18 for k in keys}, clock, heartbeat_timeout_s=10)
    for key in keys[:2]:
        await registry.register(make_registration(key, CAPACITY, "eu", "http://h:1", now=clock.now))
    for _ in range(3):
        clock.now += 6
        await registry.heartbeat(make_heartbeat(keys[0], in_flight=2, now=clock.now))
    assert [r.address for r in registry.healthy()] == [keys[0].address]
    assert registry.get(keys[0].address).in_flight == 2
    with pytest.raises(RegistrationRefused) as unknown:
        await registry.heartbeat(make_heartbeat(keys[2], now=clock.now))
    assert unknown.value.status == 404


async def test_a_worker_whose_stake_fell_is_dropped_at_its_next_heartbeat(keys):
    stakes = {keys[0].address: 10**18}
    clock = Clock()
    registry = Registry(stake_lookup(type("Chain", (), {"stake_of": lambda self, a: stakes.get(a, 0)})()),
                        RegistryPolicy(min_stake_wei=10**18), clock)
    await registry.register(make_registration(keys[0], CAPACITY, "eu", "http://h:1", now=NOW))
    stakes[keys[0].address] = 0  # slashed or unstaked
    with pytest.raises(RegistrationRefused):
        await registry.heartbeat(make_heartbeat(keys[0], now=NOW + 1))
    assert registry.all() == ()


def test_a_message_signed_by_another_key_is_refused(keys):
    signed = make_registration(keys[0], CAPACITY, "eu", "http://h:1", now=NOW).to_json()
    forged = make_registration(keys[1], CAPACITY, "eu", "http://h:1", now=NOW).to_json()
    signed["signature"] = forged["signature"]
    with pytest.raises(MessageError, match="not by"):
        parse_signed_registration(signed)


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda m: m["message"].pop("region"), "missing field(s) ['region']"),
        (lambda m: m["message"].update(extra=1), "unknown field(s) ['extra']"),
        (lambda m: m["message"]["capacity"].update(memory_bytes=-1), "memory_bytes"),
        (lambda m: m["message"]["capacity"].update(layer_tokens_per_s="fast"), "layer_tokens_per_s"),
        (lambda m: m["message"].update(stage_url="ftp://x"), "stage_url"),
        (lambda m: m["message"].update(address="0x12"), "not an Ethereum address"),
        (lambda m: m["message"].update(kind="stagewise/heartbeat"), "kind"),
        (lambda m: m.update(signature="0xzz"), "not valid hex"),
        (lambda m: m.update(signature="0x" + "00" * 64), "65 bytes"),
    ],
)
def test_malformed_registrations_name_what_is_wrong(keys, mutate, words):
    data = make_registration(keys[0], CAPACITY, "eu", "http://h:1", now=NOW).to_json()
    mutate(data)
    with pytest.raises(MessageError) as error:
        parse_signed_registration(data)
    assert words in str(error.value)


def test_heartbeat_round_trips(keys):
    signed = make_heartbeat(keys[0], in_flight=3, now=NOW)
    assert parse_signed_heartbeat(signed.to_json()) == signed


@pytest.mark.parametrize("url", ["http://127.0.0.1:9100", "http://localhost:9100", "http://10.0.0.5:9100",
                                 "http://169.254.169.254:80", "http://[::1]:9100", "http://192.168.1.2:9100"])
async def test_a_stage_url_inside_the_validators_network_is_refused_unless_allowed(keys, url):
    """The validator sends signed PUT and DELETE requests to a worker's stage URL: a staked key pointing it at
    an internal address (a metadata service, an admin port) would steer those requests there."""
    registry = registry_for({keys[0].address: 10**18}, Clock(), allow_private_urls=False)
    with pytest.raises(RegistrationRefused) as refused:
        await registry.register(make_registration(keys[0], CAPACITY, "eu", url, now=NOW))
    assert (refused.value.code, refused.value.status) == ("private_stage_url", 403)
    public = await registry.register(make_registration(keys[0], CAPACITY, "eu", "http://8.8.8.8:9100", now=NOW))
    assert public.stage_url == "http://8.8.8.8:9100"
    allowed = registry_for({keys[0].address: 10**18}, Clock(), allow_private_urls=True)  # a devnet, a LAN
    assert (await allowed.register(make_registration(keys[0], CAPACITY, "eu", url, now=NOW))).stage_url == url


@pytest.mark.parametrize("url", ["http://h:1/admin", "http://h:1/?x=1", "http://h:1/#f", "http://user:pw@h:1",
                                 "http://h:99999"])
def test_a_stage_url_is_a_server_root_only(keys, url):
    with pytest.raises(MessageError, match="stage_url"):
        make_registration(keys[0], CAPACITY, "eu", url, now=NOW)
