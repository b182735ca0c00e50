"""The handoff audit (PROTOCOL I2, I8): in a low-precision job that would pass, the validator asks stage 1 for the
rows stage 0 sent it, and judges them against what stage 0 honestly sends from the job's prompt.

Why: on SmolLM2 in bf16, a stage 0 that embeds another token than the prompt's is not seen by the proofs (after
layer 10, 111 of a prefill chunk's 128 committed entries sit in four token-independent dimensions;
docs/verification.md), and the later stages compute honestly on what they got, so every proof passes. The
rows themselves differ at the changed position by a relative L1 of ~1.65 against an honest ~0.03.
"""

import pytest
import torch

from node.protocol.job import SamplingParams
from node.validator.verdict import Reason
from tests.validator.conftest import TEST_DOMAIN

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


async def _judged(sqlite_url, text: str, new_tokens: int, seeds: tuple[int, int], *, middle: bool = False,
                  top_p: float = 1.0, with_honest: bool = True):
    """An honest SmolLM2 bf16 job (unless not `with_honest`) and one whose stage 0 changed a prompt token, through three
    stage servers, judged by a bf16 validator whose defence source is the rows stages 1 and 2 kept: (verdicts, the
    stages asked, bundles)."""
    from ledger.store import Ledger
    from node.pipeline.local import LocalPipeline
    from node.pipeline.smollm2 import chat_prompt_ids, load_tokenizer, smollm2_dir
    from node.protocol.bundle import Bundle, SignedStage
    from node.protocol.receipts import expected_receipt, sign_receipt
    from node.validator.replay_models import ReplayModels
    from node.validator.service import ValidatorNode
    from tests.validator.conftest import make_config, stake_all

    torch.set_num_threads(1)
    model_dir = smollm2_dir()
    prompt = chat_prompt_ids(load_tokenizer(model_dir), text)
    cheat, kept, bundles = PromptTokenCheat(len(prompt) // 2 if middle else CHANGED_POSITION), [], []
    async with LocalPipeline(model_dir, 3, precision="bf16", stage_options={
            0: {"on_loaded": cheat}, 1: {"on_result": kept.append}, 2: {"on_result": kept.append}}) as pipe:
        for cheating in (False, True) if with_honest else (True,):
            cheat.on = cheating
            sampling = SamplingParams(temperature=0.8, top_k=50, top_p=top_p, max_new_tokens=new_tokens)
            spec = pipe.spec(prompt, sampling, seed=seeds[cheating])
            output = await pipe.run(spec)
            stages = []
            for index, (result, key) in enumerate(zip(await pipe.stage_results(spec.job_id_hex), pipe.keys)):
                receipt = expected_receipt(spec, index, output, result.proofs,
                                           received_proofs=[h.claim.proof for h in result.handoffs])
                stages.append(SignedStage(receipt, sign_receipt(key, receipt, TEST_DOMAIN), tuple(result.proofs)))
            bundles.append(Bundle(spec, tuple(stages), tuple(output)))
        keys = list(pipe.keys)
    asked = []

    async def received_rows(spec, stage, limit, deadline_s=None):
        asked.append((spec.job_id_hex, stage))
        return next((tuple(r.handoffs) for r in kept if r.job_id == spec.job_id_hex and r.stage_index == stage), None)

    async with await Ledger.open(sqlite_url) as ledger:
        await stake_all(ledger, keys)
        node = ValidatorNode(make_config(model_dir), ledger, domain=TEST_DOMAIN,
                             models=ReplayModels([model_dir], precision="bf16"))
        node.defence_source = received_rows
        verdicts = []
        for bundle in bundles:
            await node.submit_bundle(bundle.to_json().encode())
            assert await node.validate_next() == bundle.spec.job_id_hex
            verdicts.append((await node.job(bundle.spec.job_id_hex))["verdict"])
    return verdicts, asked, bundles


@pytest.mark.slow
async def test_a_changed_prompt_token_that_every_proof_misses_is_blamed_on_stage_0_by_the_rows_it_sent(sqlite_url):
    """Short jobs (4 new tokens): every proof of the cheating job passes. Without the audit both were accepted."""
    (honest, cheated), asked, bundles = await _judged(sqlite_url, "Explain in two sentences why the sky is blue.", 4, (3, 4))
    assert asked == [(b.spec.job_id_hex, 1) for b in bundles]  # every proof passed: only the audit asked for rows
    assert honest["outcome"] == "accepted", honest
    assert (cheated["outcome"], cheated["blamed_stage"], cheated["reason"]) == ("blamed", 0, Reason.ALTERED_HANDOFF.value)


@pytest.mark.slow
async def test_a_changed_prompt_token_whose_drift_fails_the_last_stage_is_still_blamed_on_stage_0(sqlite_url):
    """Attack on an honest neighbour: over 64 new tokens the changed token's drift reaches the last stage, whose
    proofs (or the sampling) then fail against the replay from the real prompt. The honest last stage must not
    pay: its defence (the rows it received) holds, the stage before it defends itself in turn, and the rows stage
    0 sent convict stage 0."""
    (cheated,), asked, bundles = await _judged(sqlite_url, "Name three prime numbers larger than 50.", 64, (11, 12),
                                               middle=True, top_p=0.95, with_honest=False)
    assert [stage for _, stage in asked] == [2, 1]  # the last stage was accused first; each defence held
    assert (cheated["outcome"], cheated["blamed_stage"], cheated["reason"]) == ("blamed", 0, Reason.ALTERED_HANDOFF.value), (cheated, asked)
