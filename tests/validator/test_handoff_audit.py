"""The handoff audit (PROTOCOL I2, I8): in a low-precision job that would pass, the validator asks stage 1 for the
rows stage 0 sent it, and judges them against what stage 0 honestly sends from the job's prompt.

Why: on SmolLM2 in bf16, a stage 0 that embeds another token than the prompt's is not seen by the proofs (after
layer 10, 111 of a prefill chunk's 128 committed entries sit in four token-independent dimensions;
docs/verification.md), and the later stages compute honestly on what they got, so every proof passes. The
rows themselves differ at the changed position by a relative L1 of ~1.65 against an honest ~0.03.
"""

import dataclasses
import os
from dataclasses import dataclass

import pytest
import torch

from node.protocol.job import SamplingParams
from node.validator.verdict import Reason
from tests.validator.conftest import TEST_DOMAIN
from tests.validator.factory import pipeline_bundle

CHANGED_POSITION = 19


class PromptTokenCheat:
    """Stage 0's cheat, while `on`: the prefill's token at `position` becomes another before it is embedded."""

    def __init__(self, position: int = CHANGED_POSITION) -> None:
        self.on = False
        self.position = position

    def __call__(self, model) -> None:
        def swap(module, args):
            tokens = args[0]
            if self.on and tokens.numel() > self.position:
                tokens = tokens.clone()
                tokens[self.position] = (tokens[self.position] + 1) % module.num_embeddings
            return (tokens,)

        model.embed_tokens.register_forward_pre_hook(swap)


@dataclass(frozen=True)
class Run:
    """One job through the pipeline: its chat prompt, length, seed, and whether stage 0 changes a prompt token (at
    CHANGED_POSITION, or at the prompt's middle)."""

    text: str
    new_tokens: int
    seed: int
    change_prompt: bool = False
    middle: bool = False
    top_p: float = 1.0


async def _pipeline_bundles(runs, stage_1_loaded=None):
    """SmolLM2 in bf16 through three stage servers: the signed bundle of each run, the rows stages 1 and 2 kept,
    and the keys."""
    from node.pipeline.local import LocalPipeline
    from node.pipeline.smollm2 import chat_prompt_ids, load_tokenizer, smollm2_dir

    torch.set_num_threads(1)
    model_dir = smollm2_dir()
    tokenizer = load_tokenizer(model_dir)
    cheat, kept, bundles = PromptTokenCheat(), [], []
    stage_1 = {"on_result": kept.append, **({"on_loaded": stage_1_loaded} if stage_1_loaded else {})}
    async with LocalPipeline(model_dir, 3, precision="bf16", stage_options={
            0: {"on_loaded": cheat}, 1: stage_1, 2: {"on_result": kept.append}}) as pipe:
        for run in runs:
            prompt = chat_prompt_ids(tokenizer, run.text)
            cheat.on, cheat.position = run.change_prompt, len(prompt) // 2 if run.middle else CHANGED_POSITION
            sampling = SamplingParams(temperature=0.8, top_k=50, top_p=run.top_p, max_new_tokens=run.new_tokens)
            spec = pipe.spec(prompt, sampling, seed=run.seed)
            output = await pipe.run(spec)
            bundles.append(pipeline_bundle(spec, output, await pipe.stage_results(spec.job_id_hex), pipe.keys, TEST_DOMAIN))
        keys = list(pipe.keys)
    return bundles, kept, keys


async def _judged(sqlite_url, bundles, kept, keys):
    """Each bundle judged by a bf16 validator whose defence source is the rows stages 1 and 2 kept: its verdict and
    the stages asked for their rows, in order."""
    from ledger.store import Ledger
    from node.pipeline.smollm2 import smollm2_dir
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode
    from tests.validator.conftest import make_config, stake_all

    asked = []

    async def received_rows(spec, stage, limit, deadline_s=None):
        asked.append((spec.job_id_hex, stage))
        return next((tuple(r.handoffs) for r in kept if r.job_id == spec.job_id_hex and r.stage_index == stage), None)

    judged = []
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # the replays: nothing else runs beside them now
    async with await Ledger.open(sqlite_url) as ledger:
        await stake_all(ledger, keys)
        node = ValidatorNode(make_config(smollm2_dir()), ledger, domain=TEST_DOMAIN,
                             models=ReplayModels([smollm2_dir()], precision="bf16"))
        node.defence_source = received_rows
        for bundle in bundles:
            job = bundle.spec.job_id_hex
            await node.submit_bundle(bundle.to_json().encode())
            assert await node.validate_next() == job
            judged.append(((await node.job(job))["verdict"], [stage for asked_job, stage in asked if asked_job == job]))
    torch.set_num_threads(threads)
    return judged


@pytest.mark.slow
async def test_a_changed_prompt_token_is_blamed_on_stage_0_by_the_rows_it_sent(sqlite_url):
    """Three jobs through one pipeline. Short jobs (4 new tokens), honest and cheating: every proof of the cheating
    one passes, and without the audit both were accepted; the audit blames stage 0. Then the attack on an honest
    neighbour: over 40 new tokens the changed token's drift reaches the last stage, whose proofs or sampling fail
    against the replay from the real prompt. The last stage must not pay: its defence (the rows it received) holds,
    the stage before it defends itself in turn, and the rows stage 0 sent convict stage 0."""
    runs = [Run("Explain in two sentences why the sky is blue.", 4, 3),
            Run("Explain in two sentences why the sky is blue.", 4, 4, change_prompt=True),
            Run("Name three prime numbers larger than 50.", 40, 12, change_prompt=True, middle=True, top_p=0.95)]
    (honest, honest_asked), (cheated, cheated_asked), (drifted, drifted_asked) = await _judged(
        sqlite_url, *await _pipeline_bundles(runs))
    # every proof passed: nobody was accused, the audit asked stage 1 for its rows (and the cross-job test may ask
    # stage 2, whose figures carry the changed token)
    assert honest_asked == [1] and cheated_asked[0] == 1
    assert honest["outcome"] == "accepted", honest
    assert (cheated["outcome"], cheated["blamed_stage"], cheated["reason"]) == ("blamed", 0, Reason.ALTERED_HANDOFF.value)
    assert drifted_asked == [2, 1]  # the last stage was accused first; each defence held
    assert (drifted["outcome"], drifted["blamed_stage"], drifted["reason"]) == ("blamed", 0, Reason.ALTERED_HANDOFF.value)


@pytest.mark.slow
async def test_a_stage_whose_job_figures_carry_its_predecessors_cheat_defends_itself(sqlite_url, monkeypatch):
    """Attack on an honest neighbour through the whole-job test: SmolLM2 doubles the drift of stage 1 in the stage
    after it. Measured over a 40 + 290-token bf16 job, int8 weights in stage 1 read a job mean of 1.91 there and 3.35
    at the honest stage 2, so bf16's bound of 3.0 blames stage 2 first. The same window on a short job: the bound
    is placed between the two stages' figures (one full chunk suffices here). Stage 2 must not pay: its received rows
    hold (int8 weights move what stage 1 sends far less than the handoff tolerance), it is judged on what it really
    received, and stage 1 is judged by its own figures."""
    from node.pipeline.calibration_cheats import cheat_weights
    from node.pipeline.smollm2 import smollm2_dir
    from node.pipeline.weights import load_stage
    from node.toploc import thresholds
    from node.validator.replay import findings_of

    bundles, kept, keys = await _pipeline_bundles([Run("Tell me a story about a lighthouse keeper.", 34, 21)],
                                                  stage_1_loaded=lambda model: cheat_weights(model, "int8"))
    bundle = bundles[0]
    model = load_stage(smollm2_dir(), dtype=torch.bfloat16)
    report = findings_of(model, bundle.spec, bundle.output_token_ids, [stage.proofs for stage in bundle.stages])
    stage_1, stage_2 = (report.figures["stages"][s]["job"]["figures"]["mant_err_mean"] for s in (1, 2))
    assert stage_2 > 1.3 * stage_1, (stage_1, stage_2)  # the honest stage reads the cheat's drift, amplified
    bound = thresholds.JobThresholds(max_mant_err_mean=(stage_1 + stage_2) / 2, min_chunks=1)
    monkeypatch.setitem(thresholds.BY_PRECISION, "bf16", dataclasses.replace(thresholds.BY_PRECISION["bf16"], job=bound))

    ((verdict, asked),) = await _judged(sqlite_url, bundles, kept, keys)
    assert asked[0] == 2  # accused first: the whole-job test failed at stage 2
    assert verdict["blamed_stage"] in (None, 1), (verdict, asked)
