"""The last id inside a top-p nucleus counts for the verifier: skipping it when it wins is caught, while
honest sampling under a small replay drift always passes."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from node.protocol.job import SamplingParams
from node.toploc import sampling

MARGIN = 1e-3


def _params(temperature=1.0, top_p=1.0, top_k=0, count=1):
    return SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=count, stop_ids=())


def _nucleus_with_a_boundary_id(vocab=32):
    """Probabilities 0.6, 0.25, 0.1, then 0.05 shared: at top-p 0.9 id 2 is the nucleus' last id (0.85 of
    the mass lies above it, 0.95 with its own)."""
    probs = torch.full((vocab,), 0.05 / (vocab - 3), dtype=torch.float64)
    probs[:3] = torch.tensor([0.6, 0.25, 0.1], dtype=torch.float64)
    return probs.log().float()


def test_skipping_the_nucleus_boundary_id_when_it_wins_fails_there():
    logits = _nucleus_with_a_boundary_id()
    params = _params(top_p=0.9, count=8)
    assert sampling.candidates(logits, params).tolist() == [0, 1, 2]
    # positions where the boundary id wins the Gumbel argmax by far more than the margin
    noise = sampling.gumbel_noise(5, torch.arange(400), logits.numel())
    perturbed = logits[:3].double() + noise[:, :3].double()
    wins = (perturbed[:, 2] - perturbed[:, :2].max(dim=-1).values > 100 * MARGIN).nonzero().flatten()
    assert wins.numel() >= 8
    start = int(wins[0])
    rows = logits.expand(8, -1).clone()
    honest = sampling.sample_next(rows, params, 5, torch.arange(8) + start)
    assert int(honest[0]) == 2
    assert sampling.verify_sampling(rows, honest, params, 5, start).ok
    cheat = honest.clone()
    cheat[0] = int(perturbed[start, :2].argmax())  # the runner-up
    check = sampling.verify_sampling(rows, cheat, params, 5, start)
    assert not check.ok and check.first_failure == 0
    assert check.in_filter[0] and check.score_gaps[0] > 100 * MARGIN
    exact_gaps, exact_possibly = sampling._gumbel_gaps_exact(rows.double(), cheat, params, 5, start, MARGIN)
    assert float(exact_gaps[0]) > 100 * MARGIN and bool(exact_possibly[0])


def test_the_boundary_id_is_not_surely_inside_when_the_drift_could_push_it_out():
    """0.85 above id 2 at top-p 0.86: a slack of 0.02 could make it 0.867 honestly, so it must not count."""
    logits = _nucleus_with_a_boundary_id()
    params = _params(top_p=0.86)
    noise = sampling.gumbel_noise(5, torch.arange(400), logits.numel())
    perturbed = logits[:3].double() + noise[:, :3].double()
    position = int((perturbed[:, 2] - perturbed[:, :2].max(dim=-1).values > 0.1).nonzero()[0])
    runner_up = torch.tensor([int(perturbed[position, :2].argmax())])
    assert math.log(0.85) + 0.02 > math.log(0.86)
    assert sampling.verify_sampling(logits.unsqueeze(0), runner_up, params, 5, position, margin=0.02).ok


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    temperature=st.sampled_from([0.3, 0.7, 1.0, 1.6]),
    top_k=st.sampled_from([0, 1, 3, 20]),
    top_p=st.sampled_from([1.0, 0.99, 0.9, 0.6, 0.3]),
    scale=st.sampled_from([0.3, 2.0, 8.0]),
    margin=st.sampled_from([MARGIN, 0.05, 0.5]),
)
def test_honest_sampling_under_a_drift_of_a_quarter_margin_always_passes(seed, temperature, top_k, top_p, scale, margin):
    generator = torch.Generator().manual_seed(seed)
    rows, vocab = 24, 300
    logits = torch.randn(rows, vocab, generator=generator) * scale
    logits[:, :6] = (logits[:, :6] * 2).round() / 2  # ties, and ids a step apart near the top
    # ids crowding just below others, inside the margin: near a top-k or top-p edge they may or may not count
    logits[:, 6:12] = logits[:, 5:6] - margin * torch.rand(rows, 6, generator=generator)
    params = _params(temperature, top_p, top_k, rows)
    tokens = sampling.sample_next(logits, params, seed, torch.arange(rows) + 40)
    drift = (torch.rand(rows, vocab, generator=generator) * 2 - 1) * (margin / 4)
    replay = logits + drift
    check = sampling.verify_sampling(replay, tokens, params, seed, 40, margin=margin)
    assert check.ok, check.reason
    exact_gaps, exact_possibly = sampling._gumbel_gaps_exact(replay.double(), tokens, params, seed, 40, margin)
    assert bool(exact_possibly.all()) and bool((exact_gaps <= margin).all())


def test_ids_just_below_the_kth_do_not_make_an_excluded_id_look_surely_inside():
    """Top-k 3: ids 0..2 are the honest set, id 3 sits within the slack below the k-th. Over {0, 1, 2}
    id 1 has 0.45 of the mass above it, so top-p 0.4 leaves only id 0; the verifier must not let id 3's
    mass (it may count toward a normaliser, never surely) make id 1 look surely inside."""
    vocab = 16
    logits = torch.full((vocab,), -30.0)
    logits[:4] = torch.tensor([1.0, 0.5, 0.498, 0.4975])
    params = _params(top_k=3, top_p=0.4, count=1)
    assert sampling.candidates(logits, params).tolist() == [0]
    noise = sampling.gumbel_noise(5, torch.arange(400), vocab)
    position = int((logits[1] + noise[:, 1] - logits[0] - noise[:, 0] > 0.1).nonzero()[0])
    honest = sampling.sample_next(logits.unsqueeze(0), params, 5, torch.tensor([position]))
    assert honest.tolist() == [0]
    assert sampling.verify_sampling(logits.unsqueeze(0), honest, params, 5, position).ok
    gaps, possibly = sampling._gumbel_gaps_exact(logits.unsqueeze(0).double(), honest, params, 5, position, MARGIN)
    assert bool(possibly[0]) and float(gaps[0]) <= MARGIN
