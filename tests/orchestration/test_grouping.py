"""Grouping as a pure function: who serves which layers, and what happens when a worker goes away."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.orchestration.grouping import (
    Candidate,
    GroupingPolicy,
    ModelShape,
    form_groups,
    regroup,
)
from node.pipeline.layer_split import SplitError, split_layers

GIB = 1 << 30


def worker(n: int, speed: float, memory: int = 64 * GIB, region: str = "eu") -> Candidate:
    return Candidate(f"0x{n:040x}", memory, speed, region)


def covers(group, num_layers: int) -> bool:
    ranges = [(s.layer_start, s.layer_end) for s in group.stages]
    return ranges[0][0] == 0 and ranges[-1][1] == num_layers and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_five_unequal_workers_get_layers_in_proportion_to_their_throughput():
    speeds = [1000.0, 2000.0, 3000.0, 4000.0, 6000.0]
    workers = [worker(i + 1, s) for i, s in enumerate(speeds)]
    grouping = form_groups(workers, ModelShape(num_layers=32, layer_bytes=GIB), GroupingPolicy(stages_per_group=5))
    (group,) = grouping.groups
    assert covers(group, 32)
    layers = {s.worker: s.num_layers for s in group.stages}
    for w in workers:
        ideal = 32 * w.layer_tokens_per_s / sum(speeds)
        assert abs(layers[w.address] - ideal) < 1, (w, layers[w.address], ideal)
    # the stages take about equally long per token: the slowest is within 35% of the fastest
    paces = [s.tokens_per_s for s in group.stages]
    assert min(paces) / max(paces) > 0.65


def test_memory_caps_a_fast_worker_and_the_rest_flow_to_the_others():
    shape = ModelShape(num_layers=12, layer_bytes=GIB)
    fast_small = worker(1, 10_000.0, memory=2 * GIB)
    slow_big = worker(2, 1_000.0, memory=20 * GIB)
    grouping = form_groups([fast_small, slow_big], shape, GroupingPolicy(stages_per_group=2))
    (group,) = grouping.groups
    assert {s.worker: s.num_layers for s in group.stages} == {fast_small.address: 2, slow_big.address: 10}


def test_groups_take_the_fewest_stages_that_hold_the_model_and_the_rest_are_spares():
    shape = ModelShape(num_layers=24, layer_bytes=GIB)
    workers = [worker(i, 1000.0 * i, memory=(8 + i) * GIB) for i in range(1, 6)]  # hold 9..13 layers
    grouping = form_groups(workers, shape)
    # 13+12 >= 24 makes a group of two; 11+10 < 24 needs the 9 too: a group of three
    assert [len(g.stages) for g in grouping.groups] == [2, 3]
    assert all(covers(g, 24) for g in grouping.groups)
    assert grouping.spares == ()
    two_left = form_groups(workers[:2] + workers[3:], shape)  # 13+12, then 10+9 < 24: two spares
    assert [len(g.stages) for g in two_left.groups] == [2] and len(two_left.spares) == 2


def test_workers_of_one_region_are_grouped_together_before_regions_are_mixed():
    shape = ModelShape(num_layers=8, layer_bytes=GIB)
    workers = [
        worker(1, 1000, 5 * GIB, "eu"), worker(2, 1000, 5 * GIB, "us"),
        worker(3, 1000, 5 * GIB, "eu"), worker(4, 1000, 5 * GIB, "us"), worker(5, 1000, 5 * GIB, "ap"),
    ]
    grouping = form_groups(workers, shape)
    assert sorted(g.regions for g in grouping.groups) == [("eu",), ("us",)]
    assert grouping.spares == (workers[4].address,)


def test_leftovers_of_several_regions_form_a_mixed_group():
    shape = ModelShape(num_layers=8, layer_bytes=GIB)
    workers = [worker(1, 1000, 5 * GIB, "eu"), worker(2, 1000, 5 * GIB, "us")]
    (group,) = form_groups(workers, shape).groups
    assert group.regions == ("eu", "us")


def test_a_lost_stage_is_replaced_by_a_spare_and_the_other_stages_keep_their_ranges():
    shape = ModelShape(num_layers=12, layer_bytes=GIB)
    workers = [worker(i, 1000.0 * i) for i in range(1, 5)]
    spare = worker(9, 500.0)
    first = form_groups(workers + [spare], shape, GroupingPolicy(stages_per_group=4))
    (group,) = first.groups
    assert first.spares == (spare.address,)
    gone = group.stages[1].worker
    after = regroup(first, [w for w in workers + [spare] if w.address != gone], shape, GroupingPolicy(stages_per_group=4))
    (repaired,) = after.groups
    assert [(s.layer_start, s.layer_end) for s in repaired.stages] == [(s.layer_start, s.layer_end) for s in group.stages]
    assert repaired.stages[1].worker == spare.address
    assert repaired.group_id != group.group_id
    (move,) = after.replacements
    assert (move.old_group, move.new_group, move.stage_index, move.old_worker, move.new_worker) == (
        group.group_id, repaired.group_id, 1, gone, spare.address
    )


def test_a_group_that_cannot_be_repaired_is_dissolved_and_its_survivors_regrouped():
    shape = ModelShape(num_layers=12, layer_bytes=GIB)
    workers = [worker(i, 1000.0 * i, memory=7 * GIB) for i in range(1, 5)]  # 2 groups of 2 stages
    first = form_groups(workers, shape)
    assert len(first.groups) == 2
    gone = first.groups[0].stages[0].worker
    after = regroup(first, [w for w in workers if w.address != gone], shape)
    assert after.dissolved == (first.groups[0].group_id,)
    assert after.groups == (first.groups[1],)  # the intact group is untouched
    assert len(after.spares) == 1


def test_intact_groups_survive_a_newcomer_who_waits_as_a_spare():
    shape = ModelShape(num_layers=6, layer_bytes=GIB)
    workers = [worker(1, 1000, 4 * GIB), worker(2, 1000, 4 * GIB)]
    first = form_groups(workers, shape)
    after = regroup(first, workers + [worker(3, 5000, 4 * GIB)], shape)
    assert after.groups == first.groups and after.spares == (worker(3, 1).address,)


def test_impossible_splits_are_refused():
    with pytest.raises(SplitError):
        split_layers(2, [1.0, 1.0, 1.0], [5, 5, 5])
    with pytest.raises(SplitError):
        split_layers(10, [1.0, 1.0], [3, 3])


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 64).flatmap(
        lambda layers: st.tuples(
            st.just(layers),
            st.lists(st.tuples(st.floats(0.1, 1e4), st.integers(1, 64)), min_size=1, max_size=min(layers, 10)),
        )
    )
)
def test_split_is_contiguous_within_bounds_and_exact(case):
    layers, stages = case
    weights = [w for w, _ in stages]
    caps = [c for _, c in stages]
    if sum(caps) < layers:
        with pytest.raises(SplitError):
            split_layers(layers, weights, caps)
        return
    ranges = split_layers(layers, weights, caps)
    assert ranges[0][0] == 0 and ranges[-1][1] == layers
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(1 <= b - a <= cap for (a, b), cap in zip(ranges, caps))


def test_a_requested_shape_grows_only_when_memory_needs_it_and_waits_for_enough_workers():
    shape = ModelShape(num_layers=8, layer_bytes=GIB)
    small = [worker(i, 1000.0, memory=3 * GIB) for i in range(1, 4)]  # 3 layers each
    (group,) = form_groups(small, shape, GroupingPolicy(stages_per_group=2)).groups
    assert len(group.stages) == 3  # two cannot hold 8 layers
    waiting = form_groups([worker(1, 1000.0), worker(2, 1000.0)], shape, GroupingPolicy(stages_per_group=3))
    assert waiting.groups == () and len(waiting.spares) == 2


def test_the_last_stage_gets_fewer_layers_for_the_lm_head_it_also_runs():
    # SmolLM2-135M: 30 layers, the head worth about 8 of them; three workers of equal speed
    even = split_layers(30, [1.0, 1.0, 1.0], [30, 30, 30])
    balanced = split_layers(30, [1.0, 1.0, 1.0], [30, 30, 30], last_extra=8.0)
    assert even == ((0, 10), (10, 20), (20, 30))
    sizes = [b - a for a, b in balanced]
    assert sizes == [13, 13, 4] and balanced[-1][1] == 30
    work = [sizes[0], sizes[1], sizes[2] + 8.0]
    assert max(work) - min(work) <= 1.0  # every stage about the same time per token


def test_grouping_counts_the_head_on_the_last_stage():
    shape = ModelShape(num_layers=30, layer_bytes=GIB, head_layers=8.0)
    (group,) = form_groups([worker(1, 1000), worker(2, 1000), worker(3, 1000)], shape,
                           GroupingPolicy(stages_per_group=3)).groups
    assert [s.num_layers for s in group.stages] == [13, 13, 4]


def test_workers_that_each_hold_the_model_still_form_a_pipeline_when_asked_to_prefer_one():
    # issue 18, item 7: three 8 GiB workers used to form three one-stage groups
    shape = ModelShape(num_layers=30, layer_bytes=64 << 20, head_layers=8.0)
    workers = [worker(n, 1000, 8 * GIB) for n in range(1, 4)]
    fewest = form_groups(workers, shape)  # the pure function's default: the fewest workers that hold the model
    assert [len(g.stages) for g in fewest.groups] == [1, 1, 1]
    pipeline = form_groups(workers, shape, GroupingPolicy(preferred_stages=3))
    assert [len(g.stages) for g in pipeline.groups] == [3] and pipeline.spares == ()
    alone = form_groups(workers[:1], shape, GroupingPolicy(preferred_stages=3))
    assert [len(g.stages) for g in alone.groups] == [1]  # one worker still serves
    four = form_groups(workers + [worker(4, 1000, 8 * GIB)], shape, GroupingPolicy(preferred_stages=3))
    assert sorted(len(g.stages) for g in four.groups) == [1, 3]


def test_workers_arriving_one_by_one_wait_for_each_other_before_a_shorter_pipeline_forms():
    # issue 18, item 7, as the README's path runs it: workers start one after the other, and the first one
    # used to form a one-stage group of its own at once, so three workers made three one-stage groups
    shape = ModelShape(num_layers=30, layer_bytes=64 << 20)
    policy = GroupingPolicy(preferred_stages=3, short_group_wait_s=30.0)
    first, second, third = (worker(n, 1000, 8 * GIB) for n in range(1, 4))
    just_came = form_groups([Candidate(**{**vars(first), "free_s": 1.0})], shape, policy)
    assert just_came.groups == () and just_came.spares == (first.address,)
    two = [Candidate(**{**vars(first), "free_s": 12.0}), Candidate(**{**vars(second), "free_s": 2.0})]
    assert form_groups(two, shape, policy).groups == ()
    three = two + [Candidate(**{**vars(third), "free_s": 0.0})]
    assert [len(g.stages) for g in form_groups(three, shape, policy).groups] == [3]  # no wait once enough came
    waited = [Candidate(**{**vars(first), "free_s": 31.0}), Candidate(**{**vars(second), "free_s": 30.0})]
    assert [len(g.stages) for g in form_groups(waited, shape, policy).groups] == [2]  # nobody else came: serve


def test_a_grouping_finds_each_group_and_each_workers_stage_as_a_scan_would():
    """group() and group_of() are looked up in indexes (a regrouping asks for every old group); they answer
    what reading the groups in order answers, and None for what is not there."""
    workers = [worker(i, 1000.0 + i, memory=(i % 3 + 1) * GIB, region=("eu", "us")[i % 2]) for i in range(60)]
    grouping = form_groups(workers, ModelShape(num_layers=8, layer_bytes=GIB // 4), GroupingPolicy(preferred_stages=3))
    assert len(grouping.groups) > 5
    for group in grouping.groups:
        assert grouping.group(group.group_id) is group
        for index, address in enumerate(group.workers):
            assert grouping.group_of(address) == (group, index)
    assert grouping.group("g-000000000000") is None and grouping.group_of(grouping.spares[0] if grouping.spares else "0x0") is None
