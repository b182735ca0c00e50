"""The workers the orchestrator knows: who registered, with what capacity, and who is still alive.

A registration is accepted only when it is signed by the address it names, is fresh (timestamp within
`max_clock_skew_s` of the validator's clock, nonce never seen in that window) and the address holds at
least `min_stake_wei` (read through a `StakeLookup`: the chain or the ledger). Heartbeats keep a worker
healthy; one that misses them for `heartbeat_timeout_s` is no longer offered to grouping, and a stake
that falls below the minimum (unstake, slash) drops the worker at its next heartbeat.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from ledger.errors import StagewiseError
from node.protocol.worker_messages import (
    Capacity,
    MessageError,
    Registration,
    SignedHeartbeat,
    SignedLeave,
    SignedRegistration,
)

log = logging.getLogger(__name__)

StakeLookup = Callable[[str], Awaitable[int]]
LEDGER_READS = 4


class RegistrationRefused(StagewiseError):
    """A well-formed message the orchestrator will not accept; `code` and `status` go into the JSON error."""

    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class RegistryPolicy:
    min_stake_wei: int = 1
    heartbeat_timeout_s: float = 30.0
    max_clock_skew_s: float = 120.0
    validator: str | None = None  # this validator's address and chain: registrations for another are refused
    chain_id: int | None = None
    allow_private_urls: bool = True  # stage URLs in loopback, private or link-local ranges (`validator run`
    # refuses them unless --allow-private-stage-urls: the validator sends signed requests to these URLs)


@dataclass(frozen=True)
class WorkerRecord:
    address: str
    capacity: Capacity
    region: str
    stage_url: str
    stake_wei: int
    registered_at: float
    last_seen: float
    in_flight: int = 0
    signed_at: int = 0  # the accepted registration's own timestamp and nonce: an older or the same one is refused
    signed_nonce: str = ""
    device: str = "cpu"
    precisions: tuple[str, ...] = ("fp32",)  # what its device computes (PROTOCOL I8)

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "memory_bytes": self.capacity.memory_bytes,
            "layer_tokens_per_s": self.capacity.layer_tokens_per_s,
            "region": self.region,
            "stage_url": self.stage_url,
            "stake_wei": str(self.stake_wei),
            "registered_at": self.registered_at,
            "last_seen": self.last_seen,
            "in_flight": self.in_flight,
            "device": self.device,
            "precisions": list(self.precisions),
        }

    def to_saved(self) -> dict[str, Any]:
        """What a restarted orchestrator needs back (node/orchestration/resume.py)."""
        return {**self.to_json(), "signed_at": self.signed_at, "signed_nonce": self.signed_nonce}

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> WorkerRecord:
        return cls(
            address=str(saved["address"]),
            capacity=Capacity(memory_bytes=int(saved["memory_bytes"]), layer_tokens_per_s=float(saved["layer_tokens_per_s"])),
            region=str(saved["region"]),
            stage_url=str(saved["stage_url"]),
            stake_wei=int(saved["stake_wei"]),
            registered_at=float(saved["registered_at"]),
            last_seen=float(saved["last_seen"]),
            signed_at=int(saved["signed_at"]),
            signed_nonce=str(saved["signed_nonce"]),
            device=str(saved.get("device", "cpu")),
            precisions=tuple(str(p) for p in saved.get("precisions", ("fp32",))),
        )


class Registry:
    """The worker table of one validator, in memory; the orchestrator keeps it in the ledger too (resume.py)."""

    def __init__(
        self,
        stake_of: StakeLookup,
        policy: RegistryPolicy = RegistryPolicy(),
        clock: Callable[[], float] = time.time,
        banned_until: Callable[[str], Awaitable[float | None]] | None = None,
        ledger_reads: int = LEDGER_READS,
    ) -> None:
        """`banned_until(address)`: when a ban on that worker ends, or None (node/orchestration/bans.py).
        `ledger_reads`: stake and ban lookups in flight at once (more for lookups that batch them: setup.py)."""
        self._stake_of = stake_of
        self._banned_until = banned_until
        self.policy = policy
        self._clock = clock
        self._workers: dict[str, WorkerRecord] = {}
        self._nonces: dict[str, float] = {}  # nonce -> when it may be forgotten
        self._expiries: list[tuple[float, str]] = []  # the same, as a heap: forgetting costs no scan of them all
        self._lock = asyncio.Lock()
        # ledger reads (stake, ban) in flight at once: enough to overlap round trips, few enough to leave the
        # ledger's connection pool to intake and verdicts (a burst of heartbeats exhausted it: 503s)
        self._reads = asyncio.Semaphore(ledger_reads)

    async def register(self, signed: SignedRegistration) -> WorkerRecord:
        message = signed.message
        signed.verify()
        self._check_audience(message)
        if not self.policy.allow_private_urls:
            await refuse_private_url(message.stage_url)
        now = self._clock()
        self._check_new_registration(message, now)  # cheap checks first: a replay costs no ledger read
        # the ledger reads are outside the lock, so registrations and heartbeats do not queue behind each other's
        await self._check_not_banned(message.address, now)
        stake = await self._staked(message.address)
        async with self._lock:
            previous = self._check_new_registration(message, now)  # again: the same message may have raced us
            self._remember(message.nonce, message.timestamp + self.policy.max_clock_skew_s)
            record = WorkerRecord(
                address=message.address,
                capacity=message.capacity,
                region=message.region,
                stage_url=message.stage_url,
                stake_wei=stake,
                registered_at=previous.registered_at if previous else now,
                last_seen=now,
                signed_at=message.timestamp,
                signed_nonce=message.nonce,
                device=message.device,
                precisions=tuple(message.precisions),
            )
            self._workers[message.address] = record
        log.info(
            "worker %s registered: %d MiB, %.0f layer-tokens/s, region %s, stage %s",
            record.address, record.capacity.memory_bytes >> 20, record.capacity.layer_tokens_per_s,
            record.region, record.stage_url,
        )
        return record

    async def _check_not_banned(self, address: str, now: float) -> None:
        if self._banned_until is None:
            return
        async with self._reads:
            until = await self._banned_until(address)
        if until is not None and until > now:
            raise RegistrationRefused(
                "banned", f"{address} is kept out (blamed again and again, or its figures drifted across jobs): "
                f"it may register in {until - now:.0f} s", 403
            )

    def _check_new_registration(self, message: Registration, now: float) -> WorkerRecord | None:
        """Refuse a stale or replayed registration; the worker's current record, if any."""
        self._check_fresh(message.nonce, message.timestamp, now)
        previous = self._workers.get(message.address)
        if previous is not None and (message.timestamp < previous.signed_at
                                     or (message.timestamp, message.nonce) == (previous.signed_at, previous.signed_nonce)):
            # the nonces seen are forgotten on a restart, the accepted registration is not (resume.py)
            raise RegistrationRefused(
                "replayed_message", f"{message.address} registered at {previous.signed_at} already: a registration "
                "must be newer than the last one accepted", 409)
        return previous

    def _check_heartbeat(self, message, now: float) -> WorkerRecord:
        """Refuse a stale or replayed heartbeat, or one from a worker not registered; the worker's record."""
        self._check_fresh(message.nonce, message.timestamp, now)
        record = self._workers.get(message.address)
        if record is None:
            raise RegistrationRefused("not_registered", f"{message.address} is not registered: register first", 404)
        return record

    def _check_audience(self, message: Registration) -> None:
        """A registration names the validator and chain it is for, so a copy cannot enrol its worker elsewhere."""
        wanted = (self.policy.validator, self.policy.chain_id)
        if wanted[0] is None:
            return
        if (message.validator.lower(), message.chain_id) != (wanted[0].lower(), wanted[1]):
            raise RegistrationRefused(
                "wrong_validator",
                f"this registration is for validator {message.validator} on chain {message.chain_id}; this is "
                f"{wanted[0]} on chain {wanted[1]}",
            )

    async def heartbeat(self, signed: SignedHeartbeat) -> WorkerRecord:
        message = signed.message
        signed.verify()
        now = self._clock()
        self._check_heartbeat(message, now)  # cheap checks first: a replay costs no ledger read
        try:
            stake = await self._staked(message.address)  # outside the lock: heartbeats do not queue behind reads
        except RegistrationRefused:
            if self._workers.pop(message.address, None) is not None:
                log.warning("worker %s dropped: stake below the minimum", message.address)
            raise
        async with self._lock:
            record = self._check_heartbeat(message, now)  # again: the same heartbeat may have raced us
            self._remember(message.nonce, message.timestamp + self.policy.max_clock_skew_s)
            record = replace(record, last_seen=now, stake_wei=stake, in_flight=message.in_flight)
            self._workers[message.address] = record
            return record

    async def signed_leave(self, signed: SignedLeave) -> None:
        """A worker says goodbye (signed, fresh): forget it."""
        message = signed.message
        signed.verify()
        now = self._clock()
        async with self._lock:
            self._check_fresh(message.nonce, message.timestamp, now)
            if message.address not in self._workers:
                raise RegistrationRefused("not_registered", f"{message.address} is not registered", 404)
            self._remember(message.nonce, message.timestamp + self.policy.max_clock_skew_s)
            del self._workers[message.address]
        log.info("worker %s left", message.address)

    def restore(self, records: Iterable[WorkerRecord]) -> None:
        """Workers a restarted orchestrator had (node/orchestration/resume.py), each given one heartbeat timeout
        from now to be heard from again."""
        now = self._clock()
        for record in records:
            if record.address not in self._workers:  # one that registered meanwhile is newer than the saved one
                self._workers[record.address] = replace(record, last_seen=now, in_flight=0)

    def clear(self) -> None:
        self._workers.clear()

    def leave(self, address: str) -> bool:
        """Forget a worker (it said goodbye, or its stage server failed); True when it was known."""
        return self._workers.pop(address, None) is not None

    def get(self, address: str) -> WorkerRecord | None:
        return self._workers.get(address)

    def all(self) -> tuple[WorkerRecord, ...]:
        return tuple(sorted(self._workers.values(), key=lambda r: r.address))

    def healthy(self) -> tuple[WorkerRecord, ...]:
        """Workers heard from within the heartbeat timeout: the ones grouping may use."""
        deadline = self._clock() - self.policy.heartbeat_timeout_s
        return tuple(record for record in self.all() if record.last_seen >= deadline)

    def is_healthy(self, address: str) -> bool:
        record = self._workers.get(address)
        return record is not None and record.last_seen >= self._clock() - self.policy.heartbeat_timeout_s

    def _remember(self, nonce: str, expiry: float) -> None:
        self._nonces[nonce] = expiry
        heapq.heappush(self._expiries, (expiry, nonce))

    def _check_fresh(self, nonce: str, timestamp: int, now: float) -> None:
        while self._expiries and self._expiries[0][0] < now:
            del self._nonces[heapq.heappop(self._expiries)[1]]
        if abs(timestamp - now) > self.policy.max_clock_skew_s:
            raise RegistrationRefused(
                "stale_message",
                f"timestamp {timestamp} is more than {self.policy.max_clock_skew_s:.0f}s from the validator's clock {int(now)}",
                400,
            )
        if nonce in self._nonces:
            raise RegistrationRefused("replayed_message", f"nonce {nonce} was already used", 409)

    async def understaked(self, addresses: Iterable[str]) -> tuple[str, RegistrationRefused] | None:
        """(address, why) for the first of `addresses` whose stake is now below the minimum (code
        insufficient_stake) or cannot be read (stake_unavailable), else None. The dispatcher asks before
        every job: a slash is capped at the stake left, so stake withdrawn or slashed away after
        registering must not leave a worker serving with nothing to lose."""
        for address in addresses:
            try:
                await self._staked(address)
            except RegistrationRefused as refused:
                return address, refused
        return None

    async def _staked(self, address: str) -> int:
        try:
            async with self._reads:
                stake = int(await self._stake_of(address))
        except Exception as error:  # the chain or ledger is down: refuse, say why, keep nothing
            raise RegistrationRefused("stake_unavailable", f"cannot read the stake of {address}: {error}", 503) from error
        if stake < self.policy.min_stake_wei:
            raise RegistrationRefused(
                "insufficient_stake", f"{address} stakes {stake} wei; at least {self.policy.min_stake_wei} wei is required"
            )
        return stake


def stake_lookup(source: Any) -> StakeLookup:
    """Adapt whatever knows stakes into a `StakeLookup`.

    Accepts a mapping {address: wei} (tests, fixed devnets), or any object with a `stake_of(address)` method,
    sync (web3's ChainClient, run in a thread so the event loop keeps serving) or async (the ledger store).
    """
    if isinstance(source, dict):
        table = {address.lower(): int(wei) for address, wei in source.items()}

        async def from_table(address: str) -> int:
            return table.get(address.lower(), 0)

        return from_table
    method = getattr(source, "stake_of", None)
    if method is None:
        raise TypeError(f"{source!r} has no stake_of(address)")
    if inspect.iscoroutinefunction(method):
        return method

    async def from_sync(address: str) -> int:
        return int(await asyncio.to_thread(method, address))

    return from_sync


__all__ = [
    "MessageError",
    "RegistrationRefused",
    "Registry",
    "RegistryPolicy",
    "StakeLookup",
    "WorkerRecord",
    "stake_lookup",
]


async def refuse_private_url(url: str) -> None:
    """RegistrationRefused unless every address the URL's host resolves to is a public one. The validator
    sends signed PUT/DELETE requests to a worker's stage URL: one pointing inside the validator's network
    would make a staked key steer its requests there. (A name that resolves elsewhere later is not caught.)"""
    import ipaddress
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parsed.hostname, parsed.port or 80, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise RegistrationRefused("unreachable_stage_url", f"stage_url host {parsed.hostname!r} does not resolve: {error}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise RegistrationRefused(
                "private_stage_url",
                f"stage_url {url} is {address}, not a public address; a validator for a private network "
                "allows it with --allow-private-stage-urls",
            )
