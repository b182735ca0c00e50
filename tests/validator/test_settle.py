"""settle: every balance change a verdict implies, named, and nothing else (node/validator/settle.py)."""

import pytest

from ledger import journal
from node.protocol.job import JobSpec, SamplingParams, StageAssignment
from node.validator.settle import SLASH_ORDER, settle
from node.validator.verdict import Findings, Reason, Tariff, decide, soft_invalidation

WORKERS = ["0x" + f"{i:040x}" for i in (1, 2, 3)]
TARIFF = Tariff(wei_per_work_unit=10, slash_wei=1_000)
EVIDENCE = "0x" + "ee" * 32
SPEC = JobSpec(
    model_id="0x" + "ab" * 32,
    prompt_token_ids=(1, 2, 3),
    sampling=SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=4, stop_ids=()),
    seed=1,
    group_id="g-1",
    stages=(StageAssignment(WORKERS[0], 0, 2), StageAssignment(WORKERS[1], 2, 4), StageAssignment(WORKERS[2], 4, 6)),
)
WORK = (14, 14, 14)


def test_an_accepted_job_pays_every_stage_its_work_and_orders_nothing_on_chain():
    verdict = decide(Findings((True, True, True), True, WORK), TARIFF)
    settlement = settle(verdict, SPEC, EVIDENCE, work_units=WORK)
    assert [(e.kind, e.worker, e.amount, e.stage, e.work_units) for e in settlement.entries] == [
        (journal.REWARD, WORKERS[s], 140, s, 14) for s in range(3)
    ]
    assert settlement.orders == () and settlement.slashed is None


def test_a_blamed_stage_is_slashed_once_in_the_journal_and_once_on_chain_by_the_same_evidence_hash():
    verdict = decide(Findings((True, False, None), None, WORK), TARIFF)
    settlement = settle(verdict, SPEC, EVIDENCE, work_units=WORK, blamed_figures={"mismatches": 9})
    rewards = [e for e in settlement.entries if e.kind == journal.REWARD]
    slashes = [e for e in settlement.entries if e.kind == journal.SLASH]
    assert [(e.worker, e.amount) for e in rewards] == [(WORKERS[0], 140)]  # the stage before proved its work
    assert [(e.worker, e.amount, e.evidence_hash, e.stage) for e in slashes] == [(WORKERS[1], 1_000, EVIDENCE, 1)]
    assert slashes[0].data == {"reason": Reason.PROOF.value, "figures": {"mismatches": 9}}
    (order,) = settlement.orders
    assert (order.kind, order.key) == (SLASH_ORDER, EVIDENCE)
    assert settlement.slashed == {"worker": WORKERS[1], "amount": "1000", "evidence_hash": EVIDENCE,
                                  "job_id": SPEC.job_id_hex, "stage": 1}


def test_no_stage_after_the_blamed_one_is_paid_or_slashed():
    verdict = decide(Findings((False, True, True), True, WORK), TARIFF)
    workers = {e.worker for e in settle(verdict, SPEC, EVIDENCE, work_units=WORK).entries}
    assert workers == {WORKERS[0]}


def test_a_slash_without_the_evidence_it_rests_on_is_refused():
    verdict = decide(Findings((False, None, None), None, WORK), TARIFF)
    with pytest.raises(ValueError, match="evidence"):
        settle(verdict, SPEC, None, work_units=WORK)


def test_a_soft_invalidation_moves_no_money_but_is_journaled_with_its_reason():
    settlement = settle(soft_invalidation(3), SPEC, None, work_units=(0, 0, 0), soft_reason="no bundle")
    assert [(e.kind, e.amount, e.data) for e in settlement.entries] == [(journal.SOFT_INVALIDATION, 0, {"reason": "no bundle"})]
    assert settlement.orders == ()


def test_a_job_left_out_of_replay_is_paid_its_claimed_work_through_decide():
    skipped = Findings((None, None, None), None, WORK, replay_skipped=True)
    settlement = settle(decide(skipped, TARIFF), SPEC, EVIDENCE, work_units=skipped.work_units)
    assert [e.amount for e in settlement.entries] == [140, 140, 140]


def test_handoff_evidence_cannot_be_left_out_of_replay_to_dodge_its_blame():
    with pytest.raises(ValueError, match="handoff evidence"):
        Findings((None, None, None), None, WORK, handoff_faults=((1, Reason.EQUIVOCATION),), replay_skipped=True)


def test_a_verdict_for_another_group_size_is_refused():
    verdict = decide(Findings((True, True), True, (1, 1)), TARIFF)
    with pytest.raises(ValueError, match="every stage"):
        settle(verdict, SPEC, EVIDENCE, work_units=(1, 1))
