"""The verifier's fast path (the head of each row's order) gives exactly the full-sort verifier's figures."""

import pytest
import torch

from node.protocol.job import SamplingParams
from node.toploc import sampling


@pytest.mark.parametrize("top_k,top_p", [(0, 0.95), (0, 0.5), (5, 1.0), (40, 0.9), (0, 0.999)])
@pytest.mark.parametrize("scale", [0.5, 3.0, 30.0])
def test_head_path_equals_the_full_sort(top_k, top_p, scale):
    generator = torch.Generator().manual_seed(int(scale * 10) + top_k)
    rows, vocab = 13, 400
    logits = torch.randn(rows, vocab, generator=generator) * scale
    logits[:, :4] = logits[:, :4].round()  # ties across the head's edge
    params = SamplingParams(temperature=0.7, top_p=top_p, top_k=top_k, max_new_tokens=rows, stop_ids=())
    tokens = torch.randint(0, vocab, (rows,), generator=generator)
    tokens[::2] = sampling.sample_next(logits[::2], params, 9, torch.arange(rows)[::2] + 11)
    for head in (1, 8, 64, vocab):  # small heads force the rows the head cannot settle onto the full sort
        for margin in (1e-3, 0.5):
            gaps, possibly = sampling._gumbel_gaps(logits, tokens, params, 9, 11, margin, head=head)
            exact_gaps, exact_possibly = sampling._gumbel_gaps_exact(logits.double(), tokens, params, 9, 11, margin)
            assert torch.equal(possibly, exact_possibly)
            assert torch.allclose(gaps, exact_gaps, rtol=0, atol=1e-9)


def test_pair_noise_is_the_full_noise_at_those_pairs():
    positions = torch.arange(5) + 70
    full = sampling.gumbel_noise(123, positions, 300)
    ids = torch.randint(0, 300, (5, 7), generator=torch.Generator().manual_seed(1))
    assert torch.equal(sampling.gumbel_pairs(123, positions.unsqueeze(1), ids), full.gather(1, ids))
