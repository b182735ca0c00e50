"""Forming groups of stages from the workers at hand: pure functions over small frozen values.

A group is an ordered list of stages that covers every layer of the model once, in contiguous ranges.
Two rules decide its shape:

* **Layers follow speed, within memory.** A stage of L layers serving T tokens costs L*T/throughput
  seconds, and a pipeline runs at the pace of its slowest stage, so each worker gets layers in proportion
  to the throughput it offers (measured at its start, or `--throughput`; every stage then takes about the
  same time), capped by how many layers its memory holds and never fewer than one. When memory binds, the
  layers it cannot hold flow to the others in proportion to their throughput (water-filling), so the
  split is min(throughput share, memory) or close.
* **Few stages, one region.** Every extra stage adds a network hop per token, and a hop across regions
  costs far more than one inside a rack, so groups are packed from one region first (at least
  `preferred_stages` workers and more only when memory needs them, or exactly `stages_per_group` when the
  operator asks for a shape: a few stages, since the product is a pipeline); only
  workers left over in every region are mixed into cross-region groups. Whoever is left is a spare.

`regroup` keeps what still works: a group whose workers are all healthy stays as it is; a group that
lost a stage gets a spare with room for that stage's layers (same region first) and keeps its other stages
and ranges, so in-flight sequences move to it by replaying their history into the new stage (see
`node.orchestration.rerouting`); only a group that cannot be repaired is dissolved and its survivors regrouped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from eth_hash.auto import keccak

from ledger.errors import InvalidInput
from node.pipeline.layer_split import split_layers

PREFERRED_STAGES = 3  # what `validator run` asks for unless told: workers that each hold the model still pipeline


class GroupingError(InvalidInput):
    """Inputs that cannot be split (more stages than layers, not enough memory)."""


@dataclass(frozen=True)
class Candidate:
    """A registered, staked, healthy worker as grouping sees it; `free_s`: how long it has been waiting
    outside any group (the orchestrator counts it; unknown = long enough)."""

    address: str
    memory_bytes: int
    layer_tokens_per_s: float
    region: str
    free_s: float = math.inf


@dataclass(frozen=True)
class ModelShape:
    """How big the model is: `layer_bytes` is what one decoder layer needs resident (weights + KV room);
    `edge_bytes` the embeddings / LM head a first or last stage holds on top; `head_layers` what the LM
    head costs per token, in layers (node/pipeline/layer_split.py)."""

    num_layers: int
    layer_bytes: int
    edge_bytes: int = 0
    head_layers: float = 0.0

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.layer_bytes < 1 or self.edge_bytes < 0:
            raise GroupingError("a model has at least one layer and a positive layer size")

    def layers_that_fit(self, memory_bytes: int) -> int:
        """How many layers a worker holds, keeping room for embeddings or head (any stage may be an edge)."""
        return max(0, min(self.num_layers, (memory_bytes - self.edge_bytes) // self.layer_bytes))


@dataclass(frozen=True)
class GroupingPolicy:
    """`stages_per_group`: a number asks for exactly that many stages (more only when their memory cannot
    hold the model; no group when too few workers are left). None packs at least `preferred_stages` workers
    (fewer when fewer are free, so one or two workers still form a group), more only when memory needs
    them: workers that could each hold the whole model still make a pipeline, which is what the product
    is. `max_stages` bounds a group's length. `short_group_wait_s`: a group of fewer than `preferred_stages`
    forms only once all its workers have waited that long for others, since workers are started one after
    another and a group, once formed, is not merged with the next worker to come."""

    stages_per_group: int | None = None
    max_stages: int = 16
    preferred_stages: int = 1
    short_group_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if self.stages_per_group is not None and self.stages_per_group < 1:
            raise GroupingError("stages_per_group must be at least 1")
        if self.preferred_stages < 1:
            raise GroupingError("preferred_stages must be at least 1")
        if self.max_stages < 1:
            raise GroupingError("max_stages must be at least 1")
        if not self.short_group_wait_s >= 0:
            raise GroupingError("short_group_wait_s must be zero or more")


@dataclass(frozen=True)
class Stage:
    worker: str
    layer_start: int
    layer_end: int
    region: str
    layer_tokens_per_s: float

    @property
    def num_layers(self) -> int:
        return self.layer_end - self.layer_start

    @property
    def tokens_per_s(self) -> float:
        return self.layer_tokens_per_s / self.num_layers


@dataclass(frozen=True)
class Group:
    group_id: str
    stages: tuple[Stage, ...]

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(stage.worker for stage in self.stages)

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(sorted({stage.region for stage in self.stages}))

    @property
    def estimated_tokens_per_s(self) -> float:
        """Decode throughput of one sequence stream: the pace of the slowest stage."""
        return min(stage.tokens_per_s for stage in self.stages)

    @property
    def num_layers(self) -> int:
        return self.stages[-1].layer_end

    def to_json(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "regions": list(self.regions),
            "estimated_tokens_per_s": round(self.estimated_tokens_per_s, 3),
            "stages": [
                {
                    "index": index,
                    "worker": stage.worker,
                    "layer_start": stage.layer_start,
                    "layer_end": stage.layer_end,
                    "region": stage.region,
                    "layer_tokens_per_s": stage.layer_tokens_per_s,
                }
                for index, stage in enumerate(self.stages)
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Group:
        """The group `to_json` wrote; GroupingError when its id is not that of its stages (a damaged row)."""
        stages = tuple(
            Stage(str(s["worker"]), int(s["layer_start"]), int(s["layer_end"]), str(s["region"]), float(s["layer_tokens_per_s"]))
            for s in data["stages"]
        )
        if not stages or group_id_of(stages) != data["group_id"]:
            raise GroupingError(f"group {data.get('group_id')!r} does not match its stages")
        return cls(data["group_id"], stages)


@dataclass(frozen=True)
class Replacement:
    """Stage `stage_index` of `old_group` moved from `old_worker` to `new_worker`, forming `new_group`."""

    old_group: str
    new_group: str
    stage_index: int
    old_worker: str
    new_worker: str


@dataclass(frozen=True)
class Grouping:
    groups: tuple[Group, ...] = ()
    spares: tuple[str, ...] = ()
    replacements: tuple[Replacement, ...] = ()
    dissolved: tuple[str, ...] = field(default=())

    def group(self, group_id: str) -> Group | None:
        return self._by_id.get(group_id)

    def group_of(self, worker: str) -> tuple[Group, int] | None:
        """The group a worker serves in and its stage index there."""
        return self._by_worker.get(worker)

    # Indexes built on first use: a regrouping asks for every group of the old grouping in the new one, which
    # by scanning was quadratic in the groups (3,333 groups of 10,000 workers: seconds a round).
    @cached_property
    def _by_id(self) -> dict[str, Group]:
        found: dict[str, Group] = {}
        for group in self.groups:
            found.setdefault(group.group_id, group)
        return found

    @cached_property
    def _by_worker(self) -> dict[str, tuple[Group, int]]:
        found: dict[str, tuple[Group, int]] = {}
        for group in self.groups:
            for index, worker in enumerate(group.workers):
                found.setdefault(worker, (group, index))
        return found


def build_group(workers: Sequence[Candidate], shape: ModelShape) -> Group:
    """Order the workers (fastest first, address as tie-break) and give each its share of the layers."""
    ordered = sorted(workers, key=lambda w: (-w.layer_tokens_per_s, w.address))
    ranges = split_layers(
        shape.num_layers,
        [w.layer_tokens_per_s for w in ordered],
        [shape.layers_that_fit(w.memory_bytes) for w in ordered],
        last_extra=shape.head_layers,
    )
    stages = tuple(
        Stage(w.address, start, end, w.region, w.layer_tokens_per_s) for w, (start, end) in zip(ordered, ranges)
    )
    return Group(group_id_of(stages), stages)


def group_id_of(stages: Iterable[Stage]) -> str:
    """A name that changes whenever a worker or a range changes: `g-` and 12 hex digits of keccak."""
    text = ";".join(f"{s.worker}:{s.layer_start}-{s.layer_end}" for s in stages)
    return "g-" + keccak(text.encode()).hex()[:12]


def form_groups(candidates: Iterable[Candidate], shape: ModelShape, policy: GroupingPolicy = GroupingPolicy()) -> Grouping:
    """Groups from scratch: one region at a time (largest first), then the leftovers mixed, then spares."""
    by_region: dict[str, list[Candidate]] = {}
    for candidate in _unique(candidates):
        by_region.setdefault(candidate.region, []).append(candidate)
    groups: list[Group] = []
    leftovers: list[Candidate] = []
    for region in sorted(by_region, key=lambda r: (-len(by_region[r]), r)):
        formed, left = _pack(by_region[region], shape, policy)
        groups += formed
        leftovers += left
    mixed, spares = _pack(leftovers, shape, policy)
    groups += mixed
    return Grouping(tuple(groups), tuple(sorted(w.address for w in spares)))


def regroup(
    previous: Grouping, candidates: Iterable[Candidate], shape: ModelShape, policy: GroupingPolicy = GroupingPolicy()
) -> Grouping:
    """The next grouping after workers came or went: keep intact groups, repair broken ones with spares
    (rerouting), dissolve what cannot be repaired, and group everyone still free."""
    alive = {c.address: c for c in _unique(candidates)}
    kept: list[Group] = []
    broken: list[Group] = []
    for group in previous.groups:
        if len(group.stages) and group.num_layers == shape.num_layers and all(w in alive for w in group.workers):
            kept.append(group)
        else:
            broken.append(group)
    busy = {w for group in kept for w in group.workers}
    survivors = {w for group in broken for w in group.workers if w in alive}
    free = [c for a, c in alive.items() if a not in busy and a not in survivors]
    repaired: list[Group] = []
    replacements: list[Replacement] = []
    dissolved: list[str] = []
    for group in broken:
        fixed = _repair(group, alive, free, shape) if group.num_layers == shape.num_layers else None
        if fixed is None:
            dissolved.append(group.group_id)
            free += [alive[w] for w in group.workers if w in alive]
            continue
        new_group, moves = fixed
        repaired.append(new_group)
        taken = {move.new_worker for move in moves}
        free = [c for c in free if c.address not in taken]
        replacements += moves
    fresh = form_groups(free, shape, policy)
    return Grouping(
        groups=tuple(kept + repaired) + fresh.groups,
        spares=fresh.spares,
        replacements=tuple(replacements),
        dissolved=tuple(dissolved),
    )


def _repair(group: Group, alive: dict[str, Candidate], free: list[Candidate], shape: ModelShape):
    stages = list(group.stages)
    moves: list[Replacement] = []
    pool = list(free)
    home = _majority_region(group)
    for index, stage in enumerate(group.stages):
        if stage.worker in alive:
            continue
        fits = [c for c in pool if shape.layers_that_fit(c.memory_bytes) >= stage.num_layers]
        if not fits:
            return None
        best = min(fits, key=lambda c: (c.region != home, -c.layer_tokens_per_s, c.address))
        pool.remove(best)
        stages[index] = Stage(best.address, stage.layer_start, stage.layer_end, best.region, best.layer_tokens_per_s)
        moves.append(Replacement(group.group_id, "", index, stage.worker, best.address))
    new_group = Group(group_id_of(stages), tuple(stages))
    return new_group, [Replacement(m.old_group, new_group.group_id, m.stage_index, m.old_worker, m.new_worker) for m in moves]


def _pack(workers: Sequence[Candidate], shape: ModelShape, policy: GroupingPolicy) -> tuple[list[Group], list[Candidate]]:
    """Greedy packing inside one pool: biggest memory first, close a group once it holds the model (and
    has `stages_per_group` stages when asked). Returns the groups and the workers left over."""
    pool = sorted(
        (w for w in workers if shape.layers_that_fit(w.memory_bytes) >= 1),
        key=lambda w: (-shape.layers_that_fit(w.memory_bytes), -w.layer_tokens_per_s, w.address),
    )
    unusable = [w for w in workers if shape.layers_that_fit(w.memory_bytes) < 1]
    limit = min(policy.max_stages, shape.num_layers)
    groups: list[Group] = []
    while pool:
        want = policy.stages_per_group
        enough = want if want is not None else min(policy.preferred_stages, len(pool), limit)
        chosen: list[Candidate] = []
        held = 0
        for worker in list(pool):
            if held >= shape.num_layers and len(chosen) >= enough:
                break
            if len(chosen) >= limit:
                break
            chosen.append(worker)
            held += shape.layers_that_fit(worker.memory_bytes)
        if held < shape.num_layers or (want is not None and len(chosen) < min(want, limit)):
            break
        if want is None and len(chosen) < min(policy.preferred_stages, limit) and any(
            worker.free_s < policy.short_group_wait_s for worker in chosen
        ):
            break  # others may still come: a shorter pipeline only once these have waited for them
        for worker in chosen:
            pool.remove(worker)
        groups.append(build_group(chosen, shape))
    return groups, pool + unusable


def _majority_region(group: Group) -> str:
    regions = [stage.region for stage in group.stages]
    return max(sorted(set(regions)), key=regions.count)


def _unique(candidates: Iterable[Candidate]) -> list[Candidate]:
    seen: dict[str, Candidate] = {}
    for candidate in candidates:
        seen.setdefault(candidate.address, candidate)
    return sorted(seen.values(), key=lambda c: c.address)
