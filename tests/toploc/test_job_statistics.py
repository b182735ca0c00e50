"""Whole-job figures and the sequential test over a worker's jobs: an honest stage whose chunks scatter
around the honest mean is never flagged, a stage whose mean sits at a cheat's level is flagged within the
expected number of jobs, and only the stage whose own figures drift is flagged."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from node.toploc.job_statistics import (
    NO_MATCH,
    JobFigures,
    SequentialState,
    SequentialTest,
    job_figures,
    job_passes,
    sequential_step,
)
from node.toploc.thresholds import JOB_THRESHOLDS, JobThresholds


@dataclass(frozen=True)
class Chunk:
    exp_mismatches: int
    mant_err_mean: float
    points: int = 128


def test_a_jobs_figures_are_the_mean_over_its_chunks():
    figures = job_figures([Chunk(2, 1.0), Chunk(0, 3.0), Chunk(6, 2.0)])
    assert figures == JobFigures(chunks=3, mant_err_mean=2.0, exp_rate=8 / 384)


def test_a_chunk_without_any_exponent_match_counts_as_very_large_not_infinite():
    figures = job_figures([Chunk(128, float(2**64)), Chunk(0, 1.0)])
    assert figures.mant_err_mean == pytest.approx((NO_MATCH + 1) / 2)


def test_short_jobs_are_not_judged_by_their_mean():
    thresholds = JobThresholds(max_mant_err_mean=2.0, min_chunks=8)
    assert job_passes(JobFigures(4, 9.0, 0.0), thresholds)
    assert not job_passes(JobFigures(8, 2.1, 0.0), thresholds)
    assert job_passes(JobFigures(8, 2.0, 0.0), thresholds)


def test_every_precision_has_job_thresholds():
    assert set(JOB_THRESHOLDS) == {"fp32", "bf16", "fp16"}


TEST = SequentialTest(honest_mean=1.0, cheat_mean=1.5, chunk_sd=0.8, alpha=1e-4, beta=1e-2)


def _jobs(rng: random.Random, mean: float, count: int, chunks: int = 20) -> list[JobFigures]:
    return [JobFigures(chunks, sum(rng.gauss(mean, TEST.chunk_sd) for _ in range(chunks)) / chunks, 0.0) for _ in range(count)]


def _run(jobs: list[JobFigures]) -> list[str]:
    state, decisions = SequentialState(), []
    for job in jobs:
        state, decision = sequential_step(TEST, state, job)
        decisions.append(decision)
    return decisions


def test_an_honest_stage_is_never_flagged_over_many_jobs():
    decisions = _run(_jobs(random.Random(1), TEST.honest_mean, 2000))
    assert "flag" not in decisions
    assert decisions.count("clear") > 100  # the test keeps deciding, and restarts each time


def test_a_stage_at_the_cheats_mean_is_flagged_within_the_expected_chunks():
    decisions = _run(_jobs(random.Random(2), TEST.cheat_mean, 200))
    first = decisions.index("flag")
    assert (first + 1) * 20 <= 3 * TEST.chunks_needed()


def test_only_the_stage_whose_figures_drift_is_flagged():
    rng = random.Random(3)
    stages = {0: _jobs(rng, TEST.honest_mean, 100), 1: _jobs(rng, TEST.cheat_mean + 0.3, 100), 2: _jobs(rng, TEST.honest_mean, 100)}
    flagged = {stage for stage, jobs in stages.items() if "flag" in _run(jobs)}
    assert flagged == {1}


def test_the_false_alarm_bound_and_the_boundaries_follow_wald():
    assert TEST.upper > 0 > TEST.lower
    assert TEST.false_alarm_bound == pytest.approx(1e-4 / 0.99)
    with pytest.raises(ValueError):
        SequentialTest(honest_mean=2.0, cheat_mean=1.0, chunk_sd=1.0)


def test_short_chunks_are_judged_by_their_own_bounds_in_bf16_only():
    from node.toploc.codec import ChunkFigures
    from node.toploc.thresholds import ACTIVATION, BF16_ACTIVATION

    one_row = ChunkFigures(exp_mismatches=40, sign_mismatches=0, mant_err_mean=25.0, mant_err_median=17.0, points=128)
    assert BF16_ACTIVATION.chunk_passes(one_row, rows=1)
    assert not BF16_ACTIVATION.chunk_passes(one_row, rows=32)  # the same figures in a full chunk: a cheat
    assert not BF16_ACTIVATION.chunk_passes(one_row)  # rows unknown: the full-chunk bounds
    assert ACTIVATION.short_rows == 0 and not ACTIVATION.chunk_passes(one_row, rows=1)


@dataclass(frozen=True)
class Checked:
    rows: tuple[int, int]
    figures: Chunk | None


def _checked(means: list[float], rows: int = 32) -> list[Checked]:
    return [Checked((i * rows, (i + 1) * rows), Chunk(0, mean)) for i, mean in enumerate(means)]


def test_the_verdicts_job_check_fails_a_stage_whose_full_chunks_average_too_high():
    from node.toploc.job_statistics import stage_job_check

    bf16 = JOB_THRESHOLDS["bf16"]
    held = stage_job_check(_checked([2.5] * 8), bf16, full_rows=16)
    assert held.ok and held.figures.chunks == 8
    assert not stage_job_check(_checked([3.5] * 8), bf16, full_rows=16).ok  # each chunk under 6.0, the job is not
    assert stage_job_check(_checked([3.5] * 7), bf16, full_rows=16).ok  # too few chunks for the mean to settle


def test_short_chunks_do_not_count_in_the_job_mean():
    """An honest one-row last chunk (mean up to ~25 in bf16) would otherwise lift an honest job over the bound."""
    from node.toploc.job_statistics import stage_job_check

    chunks = _checked([2.5] * 8) + [Checked((256, 257), Chunk(30, 25.0)), Checked((257, 258), None)]
    check = stage_job_check(chunks, JOB_THRESHOLDS["bf16"], full_rows=16)
    assert check.ok and check.figures.chunks == 8
    assert stage_job_check(_checked([25.0], rows=4), JOB_THRESHOLDS["bf16"], full_rows=16).figures is None


# The attack on the cross-job test: a stage that cheats subtly passes its drift on to every later stage (the
# replay starts from the tokens, so stage 2's figures measure stage 1's cheat too, and a model may amplify it). Its
# honest neighbour must never be the one blamed, even when the drift it inherits reads higher than the cheater's own.
# The cheater at stage 1 is judged on its own figures (the handoff audit replays it from the rows it received).
def _inheriting_group(rng: random.Random, cheat: float, inherited_extra: float, chunks: int = 10) -> list[JobFigures]:
    own = [rng.gauss(cheat, TEST.chunk_sd) for _ in range(chunks)]
    later = [mean + inherited_extra + rng.gauss(0.0, 0.2) for mean in own]
    honest_first = [rng.gauss(TEST.honest_mean - 0.3, TEST.chunk_sd) for _ in range(chunks)]
    return [JobFigures(chunks, sum(c) / chunks, 0.0) for c in (honest_first, own, later)]


@pytest.mark.parametrize("inherited_extra", [0.0, 0.15, 0.4, 1.0])
def test_a_subtle_cheater_is_blamed_not_the_honest_stage_after_it_that_inherits_its_drift(inherited_extra):
    from node.toploc.job_statistics import drift_step

    blamed = []
    for history in range(300):
        rng = random.Random(history)
        states = (SequentialState(),) * 3
        for _ in range(200):
            step = drift_step(TEST, states, _inheriting_group(rng, TEST.cheat_mean, inherited_extra), judged={0, 1})
            states = step.states
            if step.blamed is not None:
                blamed.append(step.blamed)
                break
    assert len(blamed) == 300  # every cheater is found
    assert blamed.count(2) == 0 and blamed.count(0) == 0, f"honest stages blamed: {blamed.count(0)} first, {blamed.count(2)} last"


def test_figures_a_stage_may_have_inherited_do_not_count_in_its_test():
    """Attack on an honest neighbour: a cheat upstream (or SmolLM2's doubling of an honest upstream drift) lifts a
    stage's figures from the tokens. Those never move its test, so they cannot carry it to the boundary for one
    job of its own to finish; judged on its own rows, an honest stage's figures clear it, a cheater's flag it."""
    from node.toploc.job_statistics import drift_step, leans_to_cheat

    high, low = JobFigures(10, TEST.cheat_mean + 0.5, 0.0), JobFigures(10, TEST.honest_mean - 0.3, 0.0)
    states = (SequentialState(), SequentialState(TEST.upper - 1.0, 6))
    for _ in range(50):
        step = drift_step(TEST, states, [low, high])  # stage 1 not judged on its own rows
        assert step.blamed is None and step.decisions[1] == "inherited" and step.states[1] == states[1]
        states = step.states
    assert leans_to_cheat(TEST, states[1], high)  # the validator would ask stage 1 for its rows
    assert drift_step(TEST, states, [low, low], judged={0, 1}).blamed is None  # its own rows: honest
    assert drift_step(TEST, states, [low, high], judged={0, 1}).blamed == 1  # its own rows: the cheat
    assert drift_step(TEST, (SequentialState(TEST.upper - 1.0, 6),), [high]).blamed == 0  # stage 0 starts from tokens


def test_one_long_job_counts_as_a_calibrated_one_and_a_job_without_any_match_does_not_overflow():
    long_job = JobFigures(2000, TEST.cheat_mean, 0.0)
    assert TEST.log_ratio(long_job) == TEST.log_ratio(JobFigures(TEST.max_chunks, TEST.cheat_mean, 0.0))
    assert abs(TEST.log_ratio(JobFigures(10, NO_MATCH, 0.0))) < 1e6


def test_a_subtle_cheater_after_an_honest_stage_is_blamed_on_its_own_figures():
    """Behind an honest stage whose figures run high (the most drifting honest kernels), a cheater is found once the
    validator judges it on the rows it received."""
    from node.toploc.job_statistics import drift_step

    rng = random.Random(5)
    for _ in range(50):
        states, blamed, jobs = (SequentialState(),) * 2, None, 0
        while blamed is None and jobs < 200:
            drifting_honest = JobFigures(10, sum(rng.gauss(TEST.honest_mean, TEST.chunk_sd) for _ in range(10)) / 10, 0.0)
            cheater = JobFigures(10, sum(rng.gauss(TEST.cheat_mean, TEST.chunk_sd) for _ in range(10)) / 10, 0.0)
            step = drift_step(TEST, states, [drifting_honest, cheater], judged={0, 1})
            states, blamed, jobs = step.states, step.blamed, jobs + 1
        assert blamed == 1


def test_an_honest_group_is_never_blamed_and_a_stage_without_full_chunks_keeps_its_state():
    from node.toploc.job_statistics import drift_step

    rng = random.Random(6)
    states = (SequentialState(),) * 3
    for _ in range(3000):
        figures = [JobFigures(10, sum(rng.gauss(TEST.honest_mean, TEST.chunk_sd) for _ in range(10)) / 10, 0.0)
                   for _ in range(3)]
        step = drift_step(TEST, states, figures, judged={0, 1, 2})
        assert step.blamed is None
        states = step.states
    kept = SequentialState(3.0, 4)
    step = drift_step(TEST, (kept, kept), [None, None])
    assert step.states == (kept, kept) and step.decisions == ("none", "none")
    with pytest.raises(ValueError):
        drift_step(TEST, (kept,), [None, None])
