import json

import pytest

from node.job import JobSpec, JobSpecError, SamplingParams, StageAssignment

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
