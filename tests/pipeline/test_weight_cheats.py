import pytest
import torch

from node.pipeline.weight_cheats import quantize_int4_per_group, sparsify_2_4


def test_int4_per_group_leaves_at_most_16_levels_in_each_group():
    weight = torch.randn(4, 256, generator=torch.Generator().manual_seed(0))
    quantized = quantize_int4_per_group(weight, group=128)
    assert quantized.shape == weight.shape and quantized.dtype == weight.dtype
    for row in quantized:
        for group in row.split(128):
            assert len(group.unique()) <= 16
    relative = ((quantized - weight).norm() / weight.norm()).item()
    assert 0.01 < relative < 0.2  # coarse, but the same matrix


def test_int4_handles_a_short_last_group_and_bf16():
    weight = torch.randn(3, 200, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    quantized = quantize_int4_per_group(weight, group=128)
    assert quantized.dtype == torch.bfloat16 and quantized.shape == (3, 200)
    assert not torch.equal(quantized, weight)


def test_2_4_sparsity_zeroes_the_two_smallest_of_every_four():
    weight = torch.tensor([[1.0, -4.0, 0.5, 3.0, 9.0, 8.0, -7.0, 6.0, 2.0]])
    sparse = sparsify_2_4(weight)
    assert sparse.tolist() == [[0.0, -4.0, 0.0, 3.0, 9.0, 8.0, 0.0, 0.0, 2.0]]
    big = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    assert (sparsify_2_4(big).view(8, 16, 4) == 0).sum(-1).eq(2).all()


@pytest.mark.parametrize("cheat", [quantize_int4_per_group, sparsify_2_4])
def test_vectors_are_left_alone(cheat):
    norm = torch.ones(16)
    assert torch.equal(cheat(norm), norm)
