"""The handoff lies of PROTOCOL I2, each told by a real worker to an honest neighbour, through the real
pipeline, the last stage's bundle assembly and the validator, on both databases: the liar is blamed and
slashed, the honest stage never is.

- `false-complaint`: stage 1 receives honest rows and complains anyway, keeping stage 0's genuine claim.
- `equivocate`: stage 0 sends noisy rows with proofs of them (stage 1 accepts them), while its receipt
  commits to the proofs of the honest rows (the replay passes it); before receipts named the handoff proofs
  they received, stage 1 was blamed for computing on them.
- `quiet`: stage 0 changes only what its proofs do not bind; stage 1 defends itself with the rows stage 0
  signed (the validator asks it for them when its proofs fail).
"""

import asyncio

import pytest

from node.worker.cheats import Cheat
from tests.worker.test_end_to_end import open_stack, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
async def stack_on_each_db(tmp_path, db_url, model_dir, served_chain):
    async with open_stack(tmp_path, db_url, model_dir, served_chain) as opened:
        yield opened


async def run_with_liar(stack, cheat: str, liar_stage: int, *, max_new_tokens: int = 40):
    """Two staked workers, the liar at `liar_stage` (the orchestrator puts the faster one first); run one job
    and judge its bundle. Returns (the judged job, the liar's address, the honest worker's address)."""
    liar, honest = stack.staked_key(), stack.staked_key()
    await stack.follow_chain()
    stop = asyncio.Event()
    speeds = {0: 2000.0, 1: 1000.0}  # the orchestrator puts the faster worker first
    workers = [stack.in_process(liar, stop, layer_tokens_per_s=speeds[liar_stage], cheat=Cheat.parse(cheat)),
               stack.in_process(honest, stop, layer_tokens_per_s=speeds[1 - liar_stage])]
    try:
        def alive():
            for worker in workers:
                if worker.done():
                    worker.result()

        group = await stack.group_of([liar, honest], alive)
        assert group.stages[liar_stage].worker == liar.address
        spec = stack.spec(group, seed=5, max_new_tokens=max_new_tokens)
        try:
            await asyncio.wait_for(stack.driver.run(group, spec, lambda ids: None), 90)
        except Exception:
            pass  # a complaint stops the job; the other lies let it finish
        await wait_for(lambda: stack.node.job(spec.job_id_hex), 60, "the bundle at the validator")
        assert await stack.node.validate_next() == spec.job_id_hex
        return await stack.node.job(spec.job_id_hex), liar.address, honest.address
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)


async def slashed(stack) -> list[str]:
    return [e.worker for e in await stack.ledger.entries(0, 1000) if e.kind == "slash"]


async def test_a_false_complaint_costs_the_complainer_and_never_the_honest_sender(stack_on_each_db):
    job, liar, honest = await run_with_liar(stack_on_each_db, "false-complaint", 1)
    verdict = job["verdict"]
    assert (verdict["outcome"], verdict["blamed_stage"], verdict["reason"]) == ("blamed", 1, "false_complaint")
    assert await slashed(stack_on_each_db) == [liar]


async def test_a_stage_whose_receipt_proofs_differ_from_its_handoff_proofs_is_slashed_for_equivocation(stack_on_each_db):
    job, liar, honest = await run_with_liar(stack_on_each_db, "equivocate:0.05", 0)
    verdict = job["verdict"]
    assert (verdict["outcome"], verdict["blamed_stage"], verdict["reason"]) == ("blamed", 0, "equivocation")
    assert await slashed(stack_on_each_db) == [liar]


async def test_a_stage_that_alters_what_its_proof_does_not_bind_is_convicted_by_its_receivers_defence(stack_on_each_db):
    job, liar, honest = await run_with_liar(stack_on_each_db, "quiet:0.9", 0)
    verdict = job["verdict"]
    assert (verdict["outcome"], verdict["blamed_stage"], verdict["reason"]) == ("blamed", 0, "altered_handoff")
    assert await slashed(stack_on_each_db) == [liar]
    evidence = await stack_on_each_db.node.evidence(job["job_id"])
    defence = evidence["figures"]["defences"]["1"]
    assert defence["valid"] and defence["altered"] and defence["worst_rel_l1"] > 0.01, defence


async def test_a_receiver_that_cheats_cannot_pass_its_blame_back_with_its_honest_inputs(stack_on_each_db):
    """The defence is no escape: a stage that computes wrong hands in inputs that match the replay, the
    replay goes on from them, and it is still the stage blamed."""
    job, liar, honest = await run_with_liar(stack_on_each_db, "perturb:1e-2", 1)
    verdict = job["verdict"]
    assert (verdict["outcome"], verdict["blamed_stage"], verdict["reason"]) == ("blamed", 1, "proof")
    assert await slashed(stack_on_each_db) == [liar]
    defence = (await stack_on_each_db.node.evidence(job["job_id"]))["figures"]["defences"]["1"]
    assert defence["valid"] and not defence["altered"] and defence["worst_rel_l1"] < 1e-3, defence
