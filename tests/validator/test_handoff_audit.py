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
    """Stage 0's cheat, while `on`: the prefill's token at CHANGED_POSITION becomes another before it is embedded."""

    def __init__(self) -> None:
        self.on = False

    def __call__(self, model) -> None:
        def swap(module, args):
            tokens = args[0]
            if self.on and tokens.numel() > CHANGED_POSITION:
                tokens = tokens.clone()
                tokens[CHANGED_POSITION] = (tokens[CHANGED_POSITION] + 1) % module.num_embeddings
            return (tokens,)

        model.embed_tokens.register_forward_pre_hook(swap)


@pytest.mark.slow
async def test_a_changed_prompt_token_that_every_proof_misses_is_blamed_on_stage_0_by_the_rows_it_sent(sqlite_url):
    """An honest SmolLM2 bf16 job and one whose stage 0 changed a prompt token, through three stage servers, judged
    by a bf16 validator whose defence source is the rows stage 1 kept. Without the audit both were accepted."""
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
    prompt = chat_prompt_ids(load_tokenizer(model_dir), "Explain in two sentences why the sky is blue.")
    cheat, kept, bundles = PromptTokenCheat(), [], []
    async with LocalPipeline(model_dir, 3, precision="bf16",
                             stage_options={0: {"on_loaded": cheat}, 1: {"on_result": kept.append}}) as pipe:
        for cheating in (False, True):
            cheat.on = cheating
            spec = pipe.spec(prompt, SamplingParams(temperature=0.8, top_k=50, max_new_tokens=4), seed=3 + cheating)
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
    honest, cheated = verdicts
    assert asked == [(b.spec.job_id_hex, 1) for b in bundles]  # every proof passed: only the audit asked for rows
    assert honest["outcome"] == "accepted", honest
    assert (cheated["outcome"], cheated["blamed_stage"], cheated["reason"]) == ("blamed", 0, Reason.ALTERED_HANDOFF.value)
