"""The sampling proof on a real (tiny, random-init) model: the validator replays the claimed tokens in one
prefill and checks each against its own logits and the job's Gumbel noise.

A run passes only if every token is what `sample_next` picks from the logits of the claimed prefix. A
shortcut is caught at the first position where it chose differently: greedy decoding when sampling was
declared, another seed, an injected token, or a token proposed by a draft model.
"""

from __future__ import annotations

import pytest
import torch

from node.protocol.job import SamplingParams
from node.toploc.sampling import sample_next, verify_sampling

PARAMS = SamplingParams(temperature=1.0, top_k=64, top_p=0.95)
SEED = 2024
PROMPT = [5, 17, 42, 9, 101, 33, 7, 64]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def models(tiny_dirs):
    from node.pipeline.weights import load_stage

    return load_stage(tiny_dirs["llama"]), load_stage(tiny_dirs["llama-other"])


def _generate(model, seed=SEED, params=PARAMS, choose=None) -> list[int]:
    """KV-cache decoding as the last stage does it; `choose(i, logits, honest) -> token` may override."""
    cache = model.new_cache()
    x = torch.tensor(PROMPT)
    tokens: list[int] = []
    for i in range(NEW_TOKENS):
        hidden = model(x, [cache])
        logits = model.logits(hidden[-1:])
        token = int(sample_next(logits, params, seed, torch.tensor([len(PROMPT) + i]))[0])
        if choose is not None:
            token = choose(i, logits, token)
        tokens.append(token)
        x = torch.tensor([token])
    return tokens


def _replayed_logits(model, tokens: list[int]) -> torch.Tensor:
    from node.pipeline.model import replay

    _, logits = replay(model, PROMPT + tokens[:-1], [model.config.num_layers])
    return logits[len(PROMPT) - 1 :]


def _first_deviation(model, tokens: list[int], params=PARAMS, seed=SEED) -> int | None:
    """Where the claimed tokens first differ from what the sampler picks on the claimed prefix."""
    logits = _replayed_logits(model, tokens)
    honest = sample_next(logits, params, seed, torch.arange(len(tokens)) + len(PROMPT))
    differing = (honest != torch.tensor(tokens)).nonzero().flatten()
    return int(differing[0]) if differing.numel() else None


def _verify(model, tokens, params=PARAMS, seed=SEED):
    return verify_sampling(_replayed_logits(model, tokens), tokens, params, seed, len(PROMPT))


def test_honest_sampled_run_passes(models):
    target, _ = models
    tokens = _generate(target)
    assert len(set(tokens)) > 3  # really sampling
    check = _verify(target, tokens)
    assert check.ok, check.reason
    assert check.first_failure is None and all(check.in_filter)
    assert max(check.score_gaps) <= check.margin


def test_greedy_decoding_when_sampling_was_declared_fails_where_it_deviates(models):
    target, _ = models
    greedy = _generate(target, params=SamplingParams(temperature=0.0))
    expected = _first_deviation(target, greedy)
    assert expected is not None
    check = _verify(target, greedy)
    assert not check.ok and check.first_failure == expected


def test_another_seed_fails_where_it_deviates(models):
    target, _ = models
    tokens = _generate(target, seed=SEED + 1)
    expected = _first_deviation(target, tokens)
    assert expected is not None
    check = _verify(target, tokens)
    assert not check.ok and check.first_failure == expected


def test_one_injected_token_fails_at_its_position(models):
    target, _ = models
    tokens = _generate(target)
    injected = list(tokens)
    injected[10] = (tokens[10] + 1) % target.config.vocab_size
    check = _verify(target, injected)
    assert not check.ok and check.first_failure == 10


def test_a_draft_models_token_fails_at_its_position(models):
    target, draft = models
    honest = _generate(target)

    def speculate(i, logits, token):
        if i != 12:
            return token
        x = torch.tensor(PROMPT + honest[:12])
        proposal = int(draft.logits(draft(x, [draft.new_cache()])[-1:]).argmax())
        return proposal

    tokens = _generate(target, choose=speculate)
    assert tokens[:12] == honest[:12] and tokens[12] != honest[12]
    check = _verify(target, tokens)
    assert not check.ok and check.first_failure == 12


def test_greedy_job_accepts_argmax_and_rejects_anything_else(models):
    target, _ = models
    params = SamplingParams(temperature=0.0)
    tokens = _generate(target, params=params)
    assert _verify(target, tokens, params=params).ok
    tokens[3] = (tokens[3] + 7) % target.config.vocab_size
    check = _verify(target, tokens, params=params)
    assert not check.ok and check.first_failure == 3
