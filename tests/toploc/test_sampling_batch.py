"""`sample_next` (the whole batch from the head of each row's order) picks exactly the token the
row-by-row reference (`candidates` from a sort of the whole row) picks."""

import pytest
import torch

from node.protocol.job import SamplingParams
from node.toploc import sampling


def _params(temperature, top_k, top_p):
    return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=1, stop_ids=())


def _rows(generator, rows, vocab):
    """Peaked, moderate and flat rows, with ties (some across the head's edge) and a few equal rows."""
    scales = torch.tensor([0.05, 0.3, 1.0, 3.0, 8.0, 30.0]).repeat(rows // 6 + 1)[:rows, None]
    logits = torch.randn(rows, vocab, generator=generator) * scales
    logits[::5, : vocab // 3] = logits[::5, : vocab // 3].round()  # many ties
    logits[1::7] = 0.0  # uniform rows: every id tied
    logits[2::9, :200] = logits[2::9, :200].max(dim=-1, keepdim=True).values  # a tie group wider than the head
    return logits


@pytest.mark.parametrize("temperature", [0.4, 1.0, 2.5])
@pytest.mark.parametrize("top_k,top_p", [(0, 0.95), (0, 0.5), (0, 0.999), (1, 1.0), (50, 1.0), (40, 0.9), (300, 0.8), (0, 1e-6)])
def test_batch_sampling_equals_the_row_by_row_reference(temperature, top_k, top_p):
    generator = torch.Generator().manual_seed(int(temperature * 10) + top_k)
    rows, vocab = 60, 1000
    logits = _rows(generator, rows, vocab)
    params = _params(temperature, top_k, top_p)
    positions = torch.randint(0, 2**32, (rows,), generator=generator)
    reference = sampling._sample_by_sorting(logits / temperature, params, 17, positions)
    assert torch.equal(sampling.sample_next(logits, params, 17, positions), reference)
    for head in (1, 8, 64):  # narrow heads force the wider retry and the row-by-row fallback
        assert torch.equal(sampling._sample_from_head(logits / temperature, params, 17, positions, head), reference)


@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (60, 0.95)])
def test_a_large_vocabulary_settles_most_rows_in_the_head_and_the_rest_in_a_wider_one(top_k, top_p):
    """SmolLM2-sized rows: peaked rows settle in the first head, broader ones (nuclei of a few hundred
    ids) in the 16x wider head, flat ones fall back to the sort; all pick the reference's token."""
    generator = torch.Generator().manual_seed(3 + top_k)
    rows, vocab = 12, 49152
    logits = torch.randn(rows, vocab, generator=generator) * torch.tensor([12.0, 4.0, 2.5, 0.2]).repeat(3)[:, None]
    params = _params(0.7, top_k, top_p)
    positions = torch.arange(rows) + 500
    reference = sampling._sample_by_sorting(logits / 0.7, params, 5, positions)
    assert torch.equal(sampling.sample_next(logits, params, 5, positions), reference)
