"""The counter-based Gumbel generator and the sampler, on synthetic logits."""

from __future__ import annotations

import pytest
import torch

from node.protocol.job import SamplingParams
from node.toploc import sampling
from node.toploc.sampling import gumbel_noise, noise_bits, sample_next, verify_sampling


def test_noise_is_a_function_of_seed_position_and_id_only():
    whole = gumbel_noise(7, torch.arange(40, 48), 1000)
    one_row = gumbel_noise(7, torch.tensor([45]), 1000)
    shuffled = gumbel_noise(7, torch.tensor([47, 40, 45]), 1000)
    assert torch.equal(whole[5], one_row[0])
    assert torch.equal(shuffled[0], whole[7]) and torch.equal(shuffled[2], whole[5])
    assert not torch.equal(gumbel_noise(8, torch.tensor([45]), 1000), one_row)
    assert torch.equal(gumbel_noise(7, torch.tensor([45]), 600)[0], one_row[0, :600])


def test_noise_bits_match_the_scalar_definition():
    seed = 2**64 - 12345
    bits = noise_bits(seed, torch.tensor([0, 3, 2**32 - 1]), 5000)
    vocab_key, position_key = sampling._seed_keys(seed)
    for row, position in enumerate([0, 3, 2**32 - 1]):
        for vocab_id in (0, 1, 4095, 4999):
            expected = sampling._triple32(
                sampling._triple32((vocab_id + vocab_key) & 0xFFFFFFFF) ^ sampling._triple32(position ^ position_key)
            )
            assert int(bits[row, vocab_id]) == expected


def test_noise_is_standard_gumbel():
    noise = gumbel_noise(123, torch.arange(64), 8192).double()
    assert torch.isfinite(noise).all()
    assert abs(float(noise.mean()) - 0.5772) < 0.01
    assert abs(float(noise.std()) - 1.2825) < 0.01


def test_gumbel_max_samples_follow_the_softmax():
    logits = torch.randn(1, 12, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0)
    draws = sample_next(logits.expand(6000, -1), params, seed=5, positions=torch.arange(6000))
    frequency = torch.bincount(draws, minlength=12).double() / 6000
    assert (frequency - torch.softmax(logits[0].double(), -1)).abs().max() < 0.03


def test_temperature_zero_is_argmax_with_lowest_id_on_ties():
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    assert sample_next(logits, SamplingParams(), 0, torch.tensor([4, 4])).tolist() == [1, 0]


def test_top_k_and_top_p_restrict_the_choice():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).expand(200, -1)
    top2 = sample_next(logits, SamplingParams(temperature=5.0, top_k=2), 1, torch.arange(200))
    assert set(top2.tolist()) == {0, 1}
    # probabilities at T=1: .636 .234 .086 .032 .012 -> top_p .8 keeps ids 0 and 1
    nucleus = sample_next(logits, SamplingParams(temperature=1.0, top_p=0.8), 1, torch.arange(200))
    assert set(nucleus.tolist()) == {0, 1}


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        gumbel_noise(-1, torch.arange(2), 10)
    with pytest.raises(ValueError):
        sample_next(torch.zeros(2, 5), SamplingParams(temperature=1.0), 0, torch.arange(3))
    with pytest.raises(ValueError):
        verify_sampling(torch.zeros(2, 5), [1, 9], SamplingParams(), 0, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_noise_is_identical_on_cuda():
    positions = torch.arange(100, 164)
    assert torch.equal(noise_bits(9, positions, 49152), noise_bits(9, positions.cuda(), 49152).cpu())
    assert torch.equal(gumbel_noise(9, positions, 49152), gumbel_noise(9, positions.cuda(), 49152).cpu())


def test_sampling_only_the_survivors_equals_the_full_vocabulary_formulation():
    from node.toploc.sampling import filter_mask

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 2000, generator=generator) * 4
    logits[:, 100] = logits[:, 101]  # a tie
    positions = torch.arange(8) + 50
    for params in (
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_k=40),
        SamplingParams(temperature=0.9, top_p=0.8),
        SamplingParams(temperature=1.0, top_k=100, top_p=0.95),
    ):
        scores = logits / params.temperature
        full = torch.where(filter_mask(scores, params), scores + gumbel_noise(11, positions, 2000), float("-inf"))
        assert torch.equal(sample_next(logits, params, 11, positions), full.argmax(dim=-1))
