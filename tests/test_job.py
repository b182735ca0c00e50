import json

import pytest

from node.protocol.job import JobSpec, JobSpecError, SamplingParams, StageAssignment

WORKERS = ["0x" + f"{i:040x}" for i in (1, 2, 3)]


def spec(**changes) -> JobSpec:
    values = dict(
        model_id="0x" + "ab" * 32,
        prompt_token_ids=(1, 2, 3),
        sampling=SamplingParams(temperature=0.7, top_p=0.9, top_k=50, max_new_tokens=16, stop_ids=(2,)),
        seed=42,
        group_id="g-1",
        stages=(StageAssignment(WORKERS[0], 0, 3), StageAssignment(WORKERS[1], 3, 6), StageAssignment(WORKERS[2], 6, 8)),
    )
    values.update(changes)
    return JobSpec(**values)


def test_job_id_is_stable_through_json():
    original = spec()
    parsed = JobSpec.from_dict(json.loads(json.dumps(original.to_dict())))
    assert parsed == original
    assert parsed.job_id == original.job_id and len(original.job_id) == 32


def test_the_declared_precision_is_part_of_the_job_id_and_fp32_keeps_the_ids_it_had():
    assert spec().precision == "fp32"
    assert spec(precision="bf16").job_id != spec().job_id != spec(precision="fp16").job_id
    assert "precision" not in spec().to_dict() and spec(precision="fp32").job_id == spec().job_id
    assert JobSpec.from_dict({**spec().to_dict(), "precision": "bf16"}) == spec(precision="bf16")
    # a job id from before precisions existed (tests/receipts/conftest.py's spec, computed on the old code)
    from tests.receipts.conftest import make_keys, make_spec

    assert make_spec(make_keys(3)).job_id_hex == "0x7ef1d35afd39bd0968170323d9d72d2c3fe276b26680058bc3198f927fbd2138"


@pytest.mark.parametrize("precision", ["int8", "FP32", "", 16])
def test_an_unknown_precision_is_refused(precision):
    with pytest.raises(JobSpecError, match="precision"):
        JobSpec.from_dict({**spec().to_dict(), "precision": precision})


def test_any_change_changes_the_job_id():
    base = spec().job_id
    assert spec(seed=43).job_id != base
    assert spec(prompt_token_ids=(1, 2, 4)).job_id != base
    assert spec(sampling=SamplingParams(temperature=0.8)).job_id != base


def test_bad_specs_say_what_is_wrong():
    data = spec().to_dict()
    with pytest.raises(JobSpecError, match="unknown field"):
        JobSpec.from_dict({**data, "extra": 1})
    with pytest.raises(JobSpecError, match="seed"):
        JobSpec.from_dict({**data, "seed": -1})
    with pytest.raises(JobSpecError, match="contiguous"):
        spec(stages=(StageAssignment(WORKERS[0], 0, 3), StageAssignment(WORKERS[1], 4, 8)))
    with pytest.raises(JobSpecError, match="address"):
        StageAssignment("not-an-address", 0, 1)


def test_every_attempt_of_a_sequence_is_its_own_job():
    """A re-issued job never shares an id with an earlier one: an honest stage signs one handoff claim per
    chunk of a job id, so two different claims for one chunk can only be a lie (PROTOCOL I2)."""
    first, again = spec(), spec(attempt=1)
    assert "attempt" not in first.to_dict() and JobSpec.from_dict(first.to_dict()) == first  # ids from before stay
    assert again.job_id != first.job_id and JobSpec.from_dict(again.to_dict()) == again
    with pytest.raises(JobSpecError, match="attempt"):
        JobSpec.from_dict({**first.to_dict(), "attempt": -1})


def test_a_rerouted_sequence_without_tokens_gets_a_new_job_id_on_the_same_group():
    from node.orchestration.rerouting import SequenceRun, continuation_spec

    task = type("Task", (), {"task_id": "t"})()
    run = SequenceRun(task=task, prompt_token_ids=(1, 2, 3), seed=9, max_new_tokens=8)
    group = type("Group", (), {"group_id": "g", "stages": spec().stages})()
    ids = set()
    for _ in range(3):
        ids.add(continuation_spec(run, group, spec().model_id, SamplingParams()).job_id)
        run.groups.append("g")
    assert len(ids) == 3


def test_what_one_spec_makes_a_validator_hash_and_verify_is_bounded():
    # A bundle body of 8 MiB once held 2.8 million prompt tokens (about a second of intake CPU to hash) or
    # tens of thousands of stages (a signature recovery each): a spec now names at most these.
    from node.protocol.job import MAX_PROMPT_TOKENS, MAX_STAGES

    assert len(spec(prompt_token_ids=(1,) * MAX_PROMPT_TOKENS).prompt_token_ids) == MAX_PROMPT_TOKENS
    with pytest.raises(JobSpecError, match=f"at most {MAX_PROMPT_TOKENS} tokens"):
        spec(prompt_token_ids=(1,) * (MAX_PROMPT_TOKENS + 1))
    many = tuple(StageAssignment(WORKERS[i % 3], i, i + 1) for i in range(MAX_STAGES + 1))
    assert len(spec(stages=many[:MAX_STAGES]).stages) == MAX_STAGES
    with pytest.raises(JobSpecError, match=f"between 1 and {MAX_STAGES} stages"):
        spec(stages=many)
