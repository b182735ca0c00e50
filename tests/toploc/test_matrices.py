"""Small versions of the calibration matrices on tiny three-stage models (bench/calibrate_toploc.py runs
the full ones, SmolLM2 included): every honest way of computing a job passes every stage's proof and the
sampling proof; every attack fails, and the validator blames the stage that did it (PROTOCOL I4)."""

from __future__ import annotations

import pytest
import torch

from node.pipeline.calibration import Job, attack_setups, check_row, honest_setups
from node.protocol.job import SamplingParams

LAYOUT = [(0, 2), (2, 4), (4, 6)]
JOB = Job(prompt=(3, 4, 5, 6, 7, 8, 9, 10), new_tokens=34, params=SamplingParams(temperature=0.8, top_k=50, top_p=0.95), seed=7)
HONEST = {setup.name: setup for setup in honest_setups()}
ATTACKS = {setup.name: setup for setup in attack_setups(len(LAYOUT))}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if HONEST[n].threads > 1 else n for n in HONEST]
)
def test_honest_llama_rows_pass(tiny_dirs, name):
    row = check_row("llama", tiny_dirs["llama"], LAYOUT, JOB, HONEST[name])
    assert row.blamed is None, row.stages
    assert all(stage.ok for stage in row.stages)
    assert row.sampling_ok and row.logit_drift < 1e-4


@pytest.mark.parametrize("name", list(ATTACKS))
def test_llama_attacks_blame_the_stage_that_did_it(tiny_dirs, name):
    setup = ATTACKS[name]
    row = check_row("llama", tiny_dirs["llama"], LAYOUT, JOB, setup)
    assert row.blamed == setup.blame, row.stages
    assert all(stage.ok for stage in row.stages[: setup.blame])  # stages before it are not blamed


@pytest.mark.parametrize(
    "name",
    [
        "batch 8 (7 other sequences beside)",
        "one prefill instead of KV-cache decode, eager",
        "stage 1 weights x (1 + 1e-3 noise)",
        "stage 1 in fp16",
        "one prompt token changed",
    ],
)
def test_qwen2_rows(tiny_dirs, name):
    setup = {**HONEST, **ATTACKS}[name]
    row = check_row("qwen2", tiny_dirs["qwen2"], LAYOUT, JOB, setup)
    assert row.blamed == setup.blame, row.stages
    assert row.as_expected
