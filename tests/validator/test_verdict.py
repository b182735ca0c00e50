"""The verdict rule (I4) as examples: who is blamed, who is paid, who is slashed."""

import pytest

from node.validator.verdict import Findings, Outcome, Reason, Tariff, decide, soft_invalidation

TARIFF = Tariff(wei_per_work_unit=10, slash_wei=1000)
WORK = (40, 40, 40)


def test_all_proofs_and_sampling_hold_pays_every_stage_by_work():
    verdict = decide(Findings((True, True, True), True, (10, 20, 30)), TARIFF)
    assert verdict.outcome is Outcome.ACCEPTED
    assert verdict.rewards_wei == (100, 200, 300)
    assert verdict.blamed_stage is None and verdict.slash_wei == 0


def test_first_failing_stage_is_blamed_and_later_stages_get_nothing():
    verdict = decide(Findings((True, False, False), None, WORK), TARIFF)
    assert verdict.outcome is Outcome.BLAMED
    assert (verdict.blamed_stage, verdict.reason) == (1, Reason.PROOF)
    assert verdict.rewards_wei == (400, 0, 0)
    assert verdict.slash_wei == 1000


def test_stage_zero_failing_pays_nobody():
    verdict = decide(Findings((False, True, True), True, WORK), TARIFF)
    assert verdict.blamed_stage == 0
    assert verdict.rewards_wei == (0, 0, 0)


def test_sampling_failure_blames_the_last_stage():
    verdict = decide(Findings((True, True, True), False, WORK), TARIFF)
    assert (verdict.blamed_stage, verdict.reason) == (2, Reason.SAMPLING)
    assert verdict.rewards_wei == (400, 400, 0)


def test_sampling_is_not_consulted_when_a_stage_failed():
    verdict = decide(Findings((True, True, False), False, WORK), TARIFF)
    assert (verdict.blamed_stage, verdict.reason) == (2, Reason.PROOF)


def test_a_convicted_sender_is_blamed_even_with_valid_proofs():
    verdict = decide(Findings((True, None, None), None, WORK, ((1, Reason.COMPLAINT),)), TARIFF)
    assert (verdict.blamed_stage, verdict.reason) == (1, Reason.COMPLAINT)
    assert verdict.rewards_wei == (400, 0, 0)


def test_an_earlier_proof_failure_wins_over_a_later_handoff_fault():
    verdict = decide(Findings((False, True, None), None, WORK, ((1, Reason.EQUIVOCATION),)), TARIFF)
    assert (verdict.blamed_stage, verdict.reason) == (0, Reason.PROOF)


def test_the_first_stage_the_handoff_evidence_convicts_is_blamed_whatever_order_it_is_listed_in():
    faults = ((2, Reason.FALSE_COMPLAINT), (1, Reason.EQUIVOCATION))
    verdict = decide(Findings((True, True, True), True, WORK, faults), TARIFF)
    assert (verdict.blamed_stage, verdict.reason) == (1, Reason.EQUIVOCATION)
    assert verdict.rewards_wei == (400, 0, 0)


def test_an_unchecked_stage_cannot_be_accepted():
    with pytest.raises(ValueError):
        decide(Findings((True, None, True), True, WORK), TARIFF)


def test_soft_invalidation_pays_and_slashes_nobody():
    verdict = soft_invalidation(3)
    assert verdict.outcome is Outcome.SOFT_INVALIDATED
    assert verdict.rewards_wei == (0, 0, 0) and verdict.slash_wei == 0


def test_verdict_round_trips_through_json_form():
    verdict = decide(Findings((True, False, True), None, WORK), TARIFF)
    from node.validator.verdict import Verdict

    assert Verdict.from_dict(verdict.to_dict()) == verdict


def test_a_stage_whose_whole_job_figures_fail_is_blamed_though_each_chunk_passed():
    """Attack: every chunk of stage 1 sits under the per-chunk bounds, but its figures over the whole job do not
    (node/toploc/job_statistics.py): stage 1 is blamed, stage 0 paid, and the sampling is not consulted."""
    verdict = decide(Findings((True, True, True), True, WORK, stage_jobs_ok=(True, False, False)), TARIFF)
    assert (verdict.outcome, verdict.blamed_stage, verdict.reason) == (Outcome.BLAMED, 1, Reason.JOB_FIGURES)
    assert verdict.rewards_wei == (400, 0, 0) and verdict.slash_wei == 1000


def test_a_chunk_failure_at_an_earlier_stage_wins_over_a_later_job_failure():
    verdict = decide(Findings((False, True, True), None, WORK, stage_jobs_ok=(True, False, True)), TARIFF)
    assert (verdict.blamed_stage, verdict.reason) == (0, Reason.PROOF)
    verdict = decide(Findings((True, True, False), None, WORK, stage_jobs_ok=(False, True, True)), TARIFF)
    assert (verdict.blamed_stage, verdict.reason) == (0, Reason.JOB_FIGURES)


def test_job_checks_come_one_per_stage():
    with pytest.raises(ValueError):
        Findings((True, True, True), True, WORK, stage_jobs_ok=(True, True))
