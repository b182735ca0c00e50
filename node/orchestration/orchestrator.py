"""The orchestrator: registered workers in, prepared groups out, kept current as workers come and go.

It owns the worker `Registry` and the current `Grouping`, and it is the one place that changes the latter:
`refresh()` regroups the healthy, staked workers (grouping.regroup: intact groups stay, broken ones are
repaired with spares or dissolved), prepares every new group on its stage servers through the
`PipelineDriver`, and releases the groups that are gone. A worker that failed a stage is forgotten until it
registers again. `run_forever()` refreshes every `regroup_interval_s`, so a worker that stops heartbeating
drops out of assignment within heartbeat_timeout_s + regroup_interval_s.

The dispatcher (dispatch.py) reads `grouping` and follows `successor(group_id)` to move a sequence from a
repaired group to its replacement; while a regrouping prepares, the groups it replaces or dissolves are
`withdrawn`: they take no new job, and are nobody's successor (their healthy stages are being moved).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from node.orchestration.grouping import Candidate, Group, Grouping, GroupingPolicy, ModelShape, regroup
from node.orchestration.pipeline_driver import PipelineDriver, StageFailure
from node.orchestration.registry import RegistrationRefused, Registry, WorkerRecord
from node.orchestration.resume import SavedOrchestration
from node.protocol.worker_messages import SignedHeartbeat, SignedLeave, SignedRegistration

log = logging.getLogger(__name__)

MAX_PREPARE_ROUNDS = 8
PREPARE_AT_ONCE = 64  # groups prepared concurrently: a real stage takes minutes to load its layers


@dataclass(frozen=True)
class Assignment:
    """What GET /v1/workers/{address}/assignment answers: the worker's stage, or that it is a spare."""

    address: str
    model_id: str
    group: Group | None
    stage_index: int | None

    def to_json(self) -> dict[str, Any]:
        if self.group is None or self.stage_index is None:
            return {"address": self.address, "model_id": self.model_id, "status": "spare", "group": None}
        stage = self.group.stages[self.stage_index]
        return {
            "address": self.address,
            "model_id": self.model_id,
            "status": "assigned",
            "group_id": self.group.group_id,
            "stage_index": self.stage_index,
            "layer_start": stage.layer_start,
            "layer_end": stage.layer_end,
            "group": self.group.to_json(),
        }


class Orchestrator:
    def __init__(
        self,
        registry: Registry,
        driver: PipelineDriver,
        model_id: str,
        shape: ModelShape,
        policy: GroupingPolicy = GroupingPolicy(),
        regroup_interval_s: float = 2.0,
        register_wait_s: float = 2.0,
        stage_alive: Callable[[str, str], Awaitable[bool]] | None = None,
        saved: SavedOrchestration | None = None,
        precision: str = "fp32",
    ) -> None:
        """`stage_alive(url, address)`: whether the stage server at `url` still answers as `address`; with it,
        a second process registering the same key elsewhere is refused while the first one runs. `saved`:
        where workers and groups are kept for a restart (`resume`). `precision`: what this model's jobs declare
        (PROTOCOL I8); a worker whose device does not compute it is refused."""
        self.saved = saved
        self.standing_by: str | None = None  # who orchestrates instead, while this process stands by (leadership.py)
        self.registry = registry
        self.stage_alive = stage_alive
        self.driver = driver
        self.model_id = model_id
        self.precision = precision
        self.shape = shape
        self.policy = policy
        self.regroup_interval_s = regroup_interval_s
        self.register_wait_s = register_wait_s
        self._background: set[asyncio.Task] = set()
        self.grouping = Grouping()
        self.changed = asyncio.Condition()
        self._successors: dict[str, str] = {}
        # groups that the regrouping under way replaces or dissolves: no new work goes there meanwhile (their new
        # stage may take minutes to load its layers, and the healthy stages are being moved to the repaired group)
        self.withdrawn: frozenset[str] = frozenset()
        self._lock = asyncio.Lock()
        self._queued: asyncio.Task | None = None  # the regroup round registrations wait for, not yet begun
        self._free_since: dict[str, float] = {}  # worker -> when it was first seen outside any group (monotonic)
        self._waiting: frozenset[str] = frozenset()
        self._settled: tuple | None = None  # what the last round saw, when a timer round could change nothing
        self._settled_until = 0.0  # ... until then (monotonic): when a spare's short-group wait runs out
        self.rounds = 0  # regroup rounds computed (a timer round that finds nothing changed is not one)
        self.progress = None  # set by the dispatcher when one runs

    # ------------------------------------------------------------------ workers

    def check_leading(self) -> None:
        """RegistrationRefused (503 not_orchestrating) while another validator process orchestrates."""
        if self.standing_by is not None:
            raise RegistrationRefused(
                "not_orchestrating", f"this validator stands by: {self.standing_by} orchestrates; try another of "
                "the validator's URLs (worker run --validator, repeatable)", 503)

    async def register(self, signed: SignedRegistration) -> WorkerRecord:
        self.check_leading()
        address = signed.message.address
        if signed.message.model_id not in (None, self.model_id):
            signed.verify()
            raise RegistrationRefused(
                "unknown_model",
                f"{address} serves model {signed.message.model_id}; this orchestrator groups workers for {self.model_id}",
                409,
            )
        if self.precision not in signed.message.precisions:
            signed.verify()
            raise RegistrationRefused(
                "unsupported_precision",
                f"this validator's jobs compute in {self.precision}; {address} offers "
                f"{', '.join(signed.message.precisions)} on {signed.message.device}",
            )
        previous = self.registry.get(address)
        if previous is not None and previous.stage_url != signed.message.stage_url and self.stage_alive is not None:
            signed.verify()  # only the key's owner may make us look at its other process
            if self.registry.is_healthy(address) and await self.stage_alive(previous.stage_url, address):
                raise RegistrationRefused(
                    "already_running",
                    f"{address} already serves a stage at {previous.stage_url}, which still answers as this key: "
                    "stop that process first (two processes with one key would sign for each other's work)",
                    409,
                )
        record = await self.registry.register(signed)
        if self.saved is not None:
            await self.saved.worker_registered(record)
        if previous is not None:
            # a worker registers once per process: a second registration is a restart, whatever its stage
            # server held (layers, links, sequences) is gone, so its group must be repaired
            await self._drop_from_groups(record.address)
        await self._refresh_soon(self.register_wait_s)
        return record

    async def heartbeat(self, signed: SignedHeartbeat) -> WorkerRecord:
        self.check_leading()
        try:
            return await self.registry.heartbeat(signed)
        except RegistrationRefused:
            # the lease went elsewhere while this waited (and the registry was emptied): a worker told "not
            # registered" would register again with the new orchestrator, which reads as its restart
            self.check_leading()
            raise

    async def _refresh_soon(self, wait_s: float) -> None:
        """Regroup in the background and wait for it at most `wait_s`: a registration is answered promptly
        even when the new group's workers take minutes to load their layers (and keep heartbeating)."""
        task = self._queued
        if task is None or task.done():  # a round queued and not yet begun sees this worker too: one for a burst
            task = self._queued = asyncio.create_task(self._refresh(queued=True), name="regroup after registration")
            self._background.add(task)
            task.add_done_callback(self._background_done)
        try:
            await asyncio.wait_for(asyncio.shield(task), wait_s)
        except asyncio.TimeoutError:
            log.info("regrouping continues in the background (workers are loading their layers)")

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("regrouping failed: %r", task.exception())

    async def leave(self, signed: SignedLeave) -> None:
        """A worker shuts down: repair its group now, before jobs fail on it."""
        self.check_leading()
        await self.registry.signed_leave(signed)
        await self._forget(signed.message.address)
        await self._refresh_soon(self.register_wait_s)

    async def worker_failed(self, worker: str, reason: str) -> None:
        """A stage server failed: forget the worker (it must register again) and reroute its groups."""
        if self.registry.leave(worker):
            log.warning("worker %s dropped: %s", worker, reason)
            await self._forget(worker)
        await self.refresh()

    def forget_everything(self) -> None:
        """Out of office (leadership.py): no workers, no groups, until the next `resume`."""
        self.grouping = Grouping()
        self.registry.clear()
        self._free_since.clear()

    async def _forget(self, worker: str) -> None:
        if self.saved is not None:
            await self.saved.worker_gone(worker)

    async def resume(self) -> None:
        """Take back the workers and groups saved before a restart (node/orchestration/resume.py): every saved
        group is prepared again (its stage servers still hold it, so nothing loads); one with a stage that no
        longer answers is left out, its workers regrouped."""
        if self.saved is None:
            return
        workers, groups = await self.saved.load()
        if not workers:
            return
        self.registry.restore(workers)
        records = {r.address: r for r in self.registry.all()}
        room = asyncio.Semaphore(PREPARE_AT_ONCE)

        async def prepared(group: Group) -> Group | None:
            async with room:
                try:
                    await self.driver.prepare(group, records)
                except StageFailure as failure:
                    log.warning("saved group %s not resumed: %s", group.group_id, failure)
                    self.registry.leave(failure.worker)
                    await self._forget(failure.worker)
                    return None
            return group

        async with self._lock:
            usable = [g for g in groups
                      if g.num_layers == self.shape.num_layers and all(w in records for w in g.workers)]
            kept = [g for g in await asyncio.gather(*(prepared(g) for g in usable)) if g is not None]
            self.grouping = Grouping(tuple(kept), ())
        log.info("resumed %d worker(s) and %d of %d group(s) kept in the ledger before the restart", len(workers),
                 len(kept), len(groups))
        await self.refresh()

    async def worker_blamed(self, worker: str, reason: str) -> None:
        """A verdict blamed this worker: out of its group now (it may register again, unless banned)."""
        await self.worker_failed(worker, f"blamed by a verdict ({reason})")

    def assignment(self, address: str) -> Assignment:
        found = self.grouping.group_of(address)
        if found is None:
            return Assignment(address, self.model_id, None, None)
        group, index = found
        return Assignment(address, self.model_id, group, index)

    # ------------------------------------------------------------------ groups

    def successor(self, group_id: str) -> Group | None:
        """The current group that took over `group_id`'s stages (itself if it still exists), if any."""
        seen = set()
        while group_id not in seen:
            seen.add(group_id)
            group = self.grouping.group(group_id)
            if group is not None and group_id not in self.withdrawn:
                return group
            if group_id not in self._successors:
                return None
            group_id = self._successors[group_id]
        return None

    async def refresh(self) -> Grouping:
        """Regroup from the healthy workers; prepare new groups; release vanished ones."""
        return await self._refresh()

    async def _refresh(self, queued: bool = False, timer: bool = False) -> Grouping:
        async with self._lock:
            if queued:
                self._queued = None  # from here on, a registration needs a round of its own
            if timer and time.monotonic() < self._settled_until and self._settled == self._round_inputs():
                return self.grouping  # same workers, same grouping, no spare's wait run out: same result
            try:
                return await self._regroup()
            finally:
                self.withdrawn = frozenset()
                async with self.changed:
                    self.changed.notify_all()

    def _round_inputs(self) -> tuple:
        """What a round's result depends on, apart from time: the grouping it starts from (the object itself,
        compared by identity first) and the healthy workers grouping may use."""
        return self.grouping, self._usable_workers()

    def _usable_workers(self) -> frozenset:
        return frozenset((r.address, r.capacity.memory_bytes, r.capacity.layer_tokens_per_s, r.region)
                         for r in self.registry.healthy() if self.precision in r.precisions)

    async def _regroup(self) -> Grouping:
        """refresh()'s work, under its lock."""
        self.rounds += 1
        self._settled = None
        started = time.monotonic()
        seen = self._usable_workers()  # what this round groups (those heard from again meanwhile need another)
        old = self.grouping
        free_s = self._count_free_time(old)
        excluded: set[str] = set()
        for _ in range(MAX_PREPARE_ROUNDS):
            candidates = [
                Candidate(r.address, r.capacity.memory_bytes, r.capacity.layer_tokens_per_s, r.region,
                          free_s.get(r.address, 0.0))
                for r in self.registry.healthy()
                if r.address not in excluded and self.precision in r.precisions
            ]
            # in a thread: at 10,000 workers a round computes for up to a second, and heartbeats go on meanwhile
            new = await asyncio.to_thread(regroup, old, candidates, self.shape, self.policy)
            self.withdrawn = frozenset(g.group_id for g in old.groups if new.group(g.group_id) is None)
            failed = await self._prepare_new(old, new)
            if not failed:
                break
            excluded |= failed
            for worker in failed:
                self.registry.leave(worker)
                await self._forget(worker)
        else:
            log.error("could not prepare groups after %d rounds; keeping none", MAX_PREPARE_ROUNDS)
            new = Grouping(spares=tuple(c.address for c in candidates))
        for replacement in new.replacements:
            self._successors[replacement.old_group] = replacement.new_group
            log.info(
                "group %s: stage %d rerouted from %s to %s (now %s)", replacement.old_group,
                replacement.stage_index, replacement.old_worker, replacement.new_worker, replacement.new_group,
            )
        current = {g.group_id for g in new.groups}
        for group in old.groups:
            if group.group_id not in current:
                await self.driver.release(group)
        for group_id in new.dissolved:
            log.info("group %s dissolved: no spare could take its place", group_id)
        before = {g.group_id for g in old.groups}
        formed = [g for g in new.groups if g.group_id not in before]
        for group in formed:
            log.info(
                "group %s formed: %s", group.group_id,
                ", ".join(f"{s.worker[:10]}[{s.layer_start},{s.layer_end})" for s in group.stages),
            )
        self.grouping = Grouping(new.groups, new.spares)
        if self.saved is not None:
            await self.saved.groups_changed(self.grouping.groups)
        if formed or len(new.groups) != len(old.groups):
            log.info("regrouped %d healthy worker(s) in %.2f s: %d group(s), %d new, %d spare(s)",
                     len(candidates), time.monotonic() - started, len(new.groups), len(formed), len(new.spares))
        self._say_who_waits(new)
        waits = [self.policy.short_group_wait_s - free_s.get(a, 0.0) for a in new.spares
                 if free_s.get(a, 0.0) < self.policy.short_group_wait_s]
        if not excluded:
            self._settled = (self.grouping, seen)
            self._settled_until = started + min(waits) if waits else math.inf
        return self.grouping

    def _count_free_time(self, old: Grouping) -> dict[str, float]:
        """Seconds each healthy worker has spent outside any group (0 for those in one)."""
        now = time.monotonic()
        busy = {w for group in old.groups for w in group.workers}
        healthy = {r.address for r in self.registry.healthy()}
        self._free_since = {a: self._free_since.get(a, now) for a in healthy - busy}
        return {a: (now - self._free_since[a] if a in self._free_since else 0.0) for a in healthy}

    def _say_who_waits(self, grouping: Grouping) -> None:
        waiting = frozenset(grouping.spares)
        if waiting and waiting != self._waiting and self.policy.short_group_wait_s > 0:
            log.info("%d free worker(s) wait up to %.0f s for others to form a pipeline of %d stages "
                     "(--preferred-stages, --short-group-wait)", len(waiting), self.policy.short_group_wait_s,
                     self.policy.preferred_stages)
        self._waiting = waiting

    async def _prepare_new(self, old: Grouping, new: Grouping) -> set[str]:
        """Prepare the groups that are new in `new`, `PREPARE_AT_ONCE` at a time; the workers that failed."""
        known = {g.group_id for g in old.groups}
        workers = {r.address: r for r in self.registry.all()}
        room = asyncio.Semaphore(PREPARE_AT_ONCE)
        failed: set[str] = set()

        async def prepare(group: Group) -> None:
            async with room:
                try:
                    await self.driver.prepare(group, workers)
                except StageFailure as failure:
                    log.warning("preparing group %s failed: %s", group.group_id, failure)
                    failed.add(failure.worker)

        await asyncio.gather(*(prepare(group) for group in new.groups if group.group_id not in known))
        return failed

    async def _drop_from_groups(self, address: str) -> None:
        found = self.grouping.group_of(address)
        if found is None:
            return
        async with self._lock:
            group = found[0]
            self.grouping = Grouping(tuple(g for g in self.grouping.groups if g.group_id != group.group_id),
                                     self.grouping.spares)
            await self.driver.release(group)

    async def run_forever(self) -> None:
        """Regroup on a timer, so missed heartbeats take workers out of assignment."""
        while True:
            await asyncio.sleep(self.regroup_interval_s)
            try:
                await self._refresh(timer=True)
            except Exception:  # keep orchestrating; the next round tries again
                log.exception("regrouping failed")

    def groups_json(self) -> dict[str, Any]:
        measured = self.progress.groups if self.progress is not None else {}
        groups = []
        for group in self.grouping.groups:
            data = group.to_json()
            data["measured_tokens_per_s"] = round(measured[group.group_id].tokens_per_s(), 3) if group.group_id in measured else None
            groups.append(data)
        return {
            "model_id": self.model_id,
            "num_layers": self.shape.num_layers,
            "groups": groups,
            "spares": list(self.grouping.spares),
            "workers": [
                {**r.to_json(), "healthy": self.registry.is_healthy(r.address)} for r in self.registry.all()
            ],
            "standing_by": self.standing_by,
        }
