"""The bf16 regime on tiny three-stage models (bench/calibrate_toploc.py --precision bf16 runs the long
version with SmolLM2): a worker honest in bf16 passes the bf16 thresholds whatever GPU kernels it computes
with (emulated: split-K products with fp32 or bf16 accumulation, flash-style attention, norms in bf16), and
the cheaper computations the proofs separate in bf16 are caught and blamed on the stage that ran them."""

from __future__ import annotations

import pytest
import torch

from node.pipeline.calibration import Job, attack_setups, check_row, honest_setups
from node.protocol.job import SamplingParams
from node.toploc.thresholds import ACTIVATION

LAYOUT = [(0, 2), (2, 4), (4, 6)]
JOB = Job(prompt=(3, 4, 5, 6, 7, 8, 9, 10), new_tokens=66, params=SamplingParams(temperature=0.8, top_k=50, top_p=0.95), seed=7)
# Every chunk under 16 rows: an 8-row prefill and 7 decode rows (a short prompt, a short answer).
SHORT_JOB = Job(prompt=(3, 4, 5, 6, 7, 8, 9, 10), new_tokens=8, params=JOB.params, seed=7)
HONEST = {setup.name: setup for setup in honest_setups(torch.bfloat16) if setup.threads == 1 and setup.batch == 1}
GROSS = {setup.name: setup for setup in attack_setups(len(LAYOUT), torch.bfloat16) if not setup.subtle}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_the_emulated_gpu_kernels_are_among_the_honest_rows():
    kernels = {setup.kernels.name for setup in HONEST.values()}
    assert {"split-K x2, partials summed in the declared dtype", "norms in the declared dtype"} <= kernels
    assert any(setup.kernels.attention == "flash" for setup in HONEST.values())


@pytest.mark.parametrize("name", list(HONEST))
def test_an_honest_bf16_worker_passes_with_any_kernels(tiny_dirs, name):
    row = check_row("llama", tiny_dirs["llama"], LAYOUT, JOB, HONEST[name], dtype=torch.bfloat16)
    assert row.blamed is None, row.stages
    assert row.sampling_ok and row.sampling_failures == 0


def test_the_fp32_thresholds_would_slash_an_honest_bf16_worker(tiny_dirs):
    """Why bf16 has thresholds of its own: honest bf16 drift is far above fp32's (zero) drift."""
    setup = HONEST["GPU kernels: split-K x2, partials summed in the declared dtype"]
    row = check_row("llama", tiny_dirs["llama"], LAYOUT, JOB, setup, dtype=torch.bfloat16, thresholds=ACTIVATION)
    assert row.blamed is not None
    assert check_row("llama", tiny_dirs["llama"], LAYOUT, JOB, setup, dtype=torch.bfloat16).blamed is None


@pytest.mark.parametrize(
    "name", ["stage 1 int4 weights (per group of 64)", "stage 1 2:4-sparse weights", "stage 1 skips a layer"]
)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gross_bf16_cheats_are_blamed_on_the_cheating_stage(tiny_dirs, arch, name):
    setup = GROSS[name]
    row = check_row(arch, tiny_dirs[arch], LAYOUT, JOB, setup, dtype=torch.bfloat16)
    assert row.blamed == setup.blame == 1, row.stages
    assert row.stages[0].ok  # the honest stage before it is not blamed


@pytest.mark.parametrize("name", list(HONEST))
def test_an_honest_bf16_worker_passes_a_short_job_with_any_kernels(tiny_dirs, name):
    row = check_row("llama", tiny_dirs["llama"], LAYOUT, SHORT_JOB, HONEST[name], dtype=torch.bfloat16)
    assert row.blamed is None, row.stages


@pytest.mark.parametrize("name", ["stage 1 int4 weights (per group of 64)", "stage 1 2:4-sparse weights"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_int4_and_2_4_cheats_are_blamed_on_a_short_job_too(tiny_dirs, arch, name):
    """Attack: a job whose every chunk is under 16 rows was judged by the loose short-chunk bounds alone (made for
    one-row chunks), which int4 and 2:4-sparse stages pass: the cheater was paid for short jobs."""
    setup = GROSS[name]
    row = check_row(arch, tiny_dirs[arch], LAYOUT, SHORT_JOB, setup, dtype=torch.bfloat16)
    assert all(stage.chunks == 2 for stage in row.stages)
    assert row.blamed == setup.blame == 1, row.stages


@pytest.mark.parametrize("name", ["one prompt token changed", "stage 2 samples a draft model's tokens"])
def test_a_changed_prompt_and_draft_tokens_are_caught_in_bf16(tiny_dirs, name):
    setup = GROSS[name]
    row = check_row("llama", tiny_dirs["llama"], LAYOUT, JOB, setup, dtype=torch.bfloat16)
    assert row.blamed == setup.blame, row.stages


def test_injected_tokens_stay_caught_at_the_bf16_sampling_margin(tiny_dirs):
    """The bf16 margin (1.0 logit units) lets honest drift through, and still refuses a token from outside the
    filtered set at its position, and a run of injected top-k tokens somewhere in it."""
    from node.pipeline.model import replay
    from node.pipeline.weights import load_stage
    from node.toploc.sampling import sample_next, verify_sampling
    from node.toploc.thresholds import BF16_SAMPLING

    model = load_stage(tiny_dirs["llama"], dtype=torch.bfloat16)
    prompt, count = list(JOB.prompt), 48
    kernels = HONEST["GPU kernels: split-K x2, partials summed in the declared dtype"]
    assert check_row("llama", tiny_dirs["llama"], LAYOUT, JOB, kernels, dtype=torch.bfloat16).sampling_ok
    honest = []
    for _ in range(count):  # an honest bf16 run, to tamper with
        _, logits = replay(model, prompt + honest, [model.config.num_layers])
        honest.append(int(sample_next(logits[-1:].float(), JOB.params, JOB.seed, torch.tensor([len(prompt) + len(honest)]))[0]))
    _, logits = replay(model, prompt + honest[:-1], [model.config.num_layers])
    logits = logits[len(prompt) - 1 :].float()
    margin = BF16_SAMPLING.logit_margin
    assert verify_sampling(logits, honest, JOB.params, JOB.seed, len(prompt), margin=margin).ok
    outside = list(honest)
    outside[20] = int(logits[20].argsort()[0])  # the least likely id: outside top-k
    check = verify_sampling(logits, outside, JOB.params, JOB.seed, len(prompt), margin=margin)
    assert not check.ok and check.first_failure == 20
    injected = list(honest)
    for position in range(0, count, 3):  # every third token: another top-k candidate
        ranked = logits[position].argsort(descending=True)[:JOB.params.top_k].tolist()
        injected[position] = next(t for t in ranked[5:] if t != honest[position])
    assert not verify_sampling(logits, injected, JOB.params, JOB.seed, len(prompt), margin=margin).ok
