"""A dataset row is what the validator accepted: the orchestrator's record of a sample is checked against the
accepted bundle before it reaches the ledger. The attack: a last stage streams the orchestrator tokens other
than those of the bundle it submits (and that bundle, honest, is accepted)."""

from __future__ import annotations

import dataclasses

import pytest

from ledger.samples import SampleError, SampleRecord
from node.validator.samples import checked_recorder
from tests.validator.factory import run_job
from tests.validator.test_validation import PROMPT, submit_and_validate

SAMPLING = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 6, "stop_ids": []}


@pytest.fixture
async def accepted(client, node, group):
    bundle = run_job(group, group.spec(PROMPT, max_new_tokens=6, seed=5))
    judged = await submit_and_validate(client, node, bundle)
    assert judged["verdict"]["outcome"] == "accepted"
    return SampleRecord(job_id=judged["job_id"], task_id="t", task_source="gen:word:n=1:seed=1", model_id=group.model_id,
                        prompt_token_ids=tuple(PROMPT), completion_token_ids=tuple(bundle.output_token_ids),
                        completion_text="words", sampling=SAMPLING, seed=5, answer="3", checker="math", correct=False)


@pytest.mark.parametrize("change, words", [
    (lambda s: {"completion_token_ids": s.completion_token_ids[:-1] + (s.completion_token_ids[-1] ^ 1,)},
     "not the output tokens"),
    (lambda s: {"completion_token_ids": s.completion_token_ids + (7,)}, "not the output tokens"),
    (lambda s: {"prompt_token_ids": (s.prompt_token_ids[0] + 1,) + s.prompt_token_ids[1:]}, "not the accepted job's prompt"),
    (lambda s: {"seed": 6}, "seed"),
    (lambda s: {"model_id": "0x" + "00" * 32}, "model"),
])
async def test_a_sample_that_is_not_what_the_accepted_job_computed_is_refused(node, accepted, change, words):
    record = checked_recorder(node.ledger)
    with pytest.raises(SampleError, match=words):
        await record(dataclasses.replace(accepted, **change(accepted)))
    assert (await node.ledger.tasks()).total == 0
    assert (await record(accepted)).kind == "sample"  # the true one is recorded
    assert (await node.ledger.tasks()).items[0].samples == 1


async def test_a_rerouted_sequence_s_earlier_tokens_are_the_accepted_job_s_prompt_tail(client, node, group):
    """A continuation job's prompt is the task's prompt and the tokens generated before the reroute."""
    earlier = (11, 12)
    bundle = run_job(group, group.spec(list(PROMPT) + list(earlier), max_new_tokens=4, seed=9))
    judged = await submit_and_validate(client, node, bundle)
    sample = SampleRecord(job_id=judged["job_id"], task_id="t", task_source="file", model_id=group.model_id,
                          prompt_token_ids=tuple(PROMPT), completion_token_ids=earlier + tuple(bundle.output_token_ids),
                          completion_text="", sampling=dict(SAMPLING, max_new_tokens=6), seed=9)
    assert (await checked_recorder(node.ledger)(sample)).kind == "sample"
