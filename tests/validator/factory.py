"""Jobs for the validator tests: a 3-stage group of a tiny model run in-process, honest or cheating.

Every stage is a real `StageModel` holding only its own layers; the hidden states a stage sends are the
ones it proves (node/toploc), the last stage samples with the seeded sampler, and every stage signs its
receipt. A cheat is a real deviation: perturbed weights on one stage, or a token the sampler did not pick.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from node.protocol.bundle import Bundle, SignedStage
from node.protocol.job import JobSpec, SamplingParams, StageAssignment
from node.protocol.receipts import ReceiptDomain, expected_receipt, sign_receipt
from node.protocol.signing import SigningKey

LAYERS = 6
SPLITS = ((0, 2), (2, 4), (4, 6))


@dataclass(frozen=True)
class Group:
    model_dir: Path
    model_id: str
    keys: tuple[SigningKey, ...]
    domain: ReceiptDomain

    def spec(self, prompt: Sequence[int], *, seed: int = 7, max_new_tokens: int = 12, temperature: float = 0.0,
             group_id: str = "group-1") -> JobSpec:
        return JobSpec(
            model_id=self.model_id,
            prompt_token_ids=tuple(prompt),
            sampling=SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, top_k=0, top_p=1.0),
            seed=seed,
            group_id=group_id,
            stages=tuple(StageAssignment(k.address, a, b) for k, (a, b) in zip(self.keys, SPLITS)),
        )


_STAGES: dict[tuple[str, int, int, int], object] = {}


def _stage(model_dir: Path, a: int, b: int, perturb_seed: int | None):
    from node.pipeline.weights import load_stage

    key = (str(model_dir), a, b, perturb_seed or 0)
    if key not in _STAGES:
        stage = load_stage(model_dir, a, b)
        if perturb_seed is not None:
            generator = torch.Generator().manual_seed(perturb_seed)
            with torch.no_grad():
                for parameter in stage.layers[0].parameters():
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
        _STAGES[key] = stage
    return _STAGES[key]


def run_job(
    group: Group,
    spec: JobSpec,
    *,
    perturbed_stage: int | None = None,
    inject_token_at: int | None = None,
) -> Bundle:
    """Generate the job through the group's stages and return the signed bundle."""
    from node.toploc.activation import build_proofs
    from node.toploc.sampling import sample_next

    torch.set_num_threads(1)
    stages = [
        _stage(group.model_dir, s.layer_start, s.layer_end, 1234 if index == perturbed_stage else None)
        for index, s in enumerate(spec.stages)
    ]
    caches = [stage.new_cache() for stage in stages]
    sent: list[list[torch.Tensor]] = [[] for _ in stages]
    prompt = list(spec.prompt_token_ids)
    vocab = stages[-1].config.vocab_size

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        for index, stage in enumerate(stages):
            x = stage(x, [caches[index]])
            sent[index].append(x.clone())
        return x

    def sample(hidden_last: torch.Tensor, position: int) -> int:
        logits = stages[-1].logits(hidden_last)
        token = int(sample_next(logits, spec.sampling, spec.seed, torch.tensor([position]))[0])
        if inject_token_at is not None and position - len(prompt) == inject_token_at:
            token = (token + 1) % vocab
        return token

    with torch.inference_mode():
        hidden = forward(torch.tensor(prompt))
        output = [sample(hidden[-1:], len(prompt))]
        while len(output) < spec.sampling.max_new_tokens and output[-1] not in spec.sampling.stop_ids:
            hidden = forward(torch.tensor([output[-1]]))
            output.append(sample(hidden, len(prompt) + len(output)))
    signed = []
    for index, key in enumerate(group.keys):
        prefill = sent[index][0]
        decode = torch.cat(sent[index][1:]) if len(sent[index]) > 1 else prefill[:0]
        proofs = tuple(build_proofs(prefill, decode))
        receipt = expected_receipt(spec, index, output, proofs, received_proofs=signed[-1].proofs if signed else ())
        signed.append(SignedStage(receipt, sign_receipt(key, receipt, group.domain), proofs))
    return Bundle(spec, tuple(signed), tuple(output))


def signed_bundle(group: Group, spec: JobSpec, output: Sequence[int], *, proof_seed: int = 0) -> Bundle:
    """A bundle whose receipts are correct and signed but whose proofs were never computed (random bytes).

    Intake accepts it (it checks form, receipts and signatures, not proofs); only a replay can tell."""
    import random

    from node.protocol.bundle import expected_proof_count

    rng = random.Random(proof_seed)
    signed = []
    for index, key in enumerate(group.keys):
        proofs = tuple(rng.randbytes(258) for _ in range(expected_proof_count(len(output))))
        receipt = expected_receipt(spec, index, output, proofs, received_proofs=signed[-1].proofs if signed else ())
        signed.append(SignedStage(receipt, sign_receipt(key, receipt, group.domain), proofs))
    return Bundle(spec, tuple(signed), tuple(output))


def pipeline_bundle(spec: JobSpec, output: Sequence[int], results: Sequence, keys: Sequence[SigningKey],
                    domain: ReceiptDomain) -> Bundle:
    """The bundle a pipeline job's stages submit: each stage's receipt over what it proved and received, signed."""
    stages = []
    for index, (result, key) in enumerate(zip(results, keys)):
        receipt = expected_receipt(spec, index, output, result.proofs, received_proofs=[h.claim.proof for h in result.handoffs])
        stages.append(SignedStage(receipt, sign_receipt(key, receipt, domain), tuple(result.proofs)))
    return Bundle(spec, tuple(stages), tuple(output))
